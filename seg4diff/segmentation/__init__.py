"""Segmentation from attention maps: class maps and prediction, zero-shot readout of one layer, unsupervised
grouping."""
