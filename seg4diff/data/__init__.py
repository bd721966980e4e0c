"""Dataset sources (COCO JSON, semantic-mask folders, synthetic Shapes) and the prepared store."""
