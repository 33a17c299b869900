"""The model: backbones (Xception's own graph among them) with preprocessing inside, build and load."""
