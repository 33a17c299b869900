"""Dataset download, image checks, split, TFRecord schema, writer and reader."""
