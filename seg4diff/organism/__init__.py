"""The Shapes organism: the embedded default model, its sampler and the readers of what it draws (colours, shapes)."""
