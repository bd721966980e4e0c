"""Training: the organism from scratch (pretrain), MAGNET fine-tuning, their losses and the one optimiser and
schedule."""
