"""Dataset download, image checks, split, TFRecord schema, writer and reader."""

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}  # what counts as a photo file
