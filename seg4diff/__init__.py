"""seg4diff: open-vocabulary segmentation from the joint attention of MM-DiT text-to-image models."""
