"""Supported keras.applications backbones and the pixel scaling each one expects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# "tf": x / 127.5 - 1; "torch": ImageNet mean/std on [0, 1]; "none": the backbone scales raw 0-255 pixels itself.
Scaling = Literal["tf", "torch", "none"]


@dataclass(frozen=True)
class Backbone:
    """How to build one keras.applications model."""

    constructor: str
    scaling: Scaling
    min_size: int


BACKBONES: dict[str, Backbone] = {
    "xception": Backbone("Xception", "tf", 71),
    "mobilenet_v2": Backbone("MobileNetV2", "tf", 32),
    "mobilenet_v3_small": Backbone("MobileNetV3Small", "none", 32),
    "mobilenet_v3_large": Backbone("MobileNetV3Large", "none", 32),
    "resnet50_v2": Backbone("ResNet50V2", "tf", 32),
    "inception_v3": Backbone("InceptionV3", "tf", 75),
    "densenet121": Backbone("DenseNet121", "torch", 32),
    "efficientnet_b0": Backbone("EfficientNetB0", "none", 32),
    "efficientnet_v2_b0": Backbone("EfficientNetV2B0", "none", 32),
    "convnext_tiny": Backbone("ConvNeXtTiny", "none", 32),
}
