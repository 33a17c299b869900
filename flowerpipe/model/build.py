"""Backbone + head, with the backbone's pixel scaling inside the graph (raw RGB 0-255 in, probabilities out)."""

from __future__ import annotations

from pathlib import Path

from flowerpipe.errors import FormatError, UserError
from flowerpipe.model import xception
from flowerpipe.model.backbones import BACKBONES
from flowerpipe.params import Model, from_scratch

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scaling_layer(scaling: str):
    """The Keras layer that maps raw 0-255 RGB to what the backbone expects."""
    import keras

    if scaling == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_pm1")
    if scaling == "torch":
        mean = [255.0 * m for m in IMAGENET_MEAN]
        var = [(255.0 * s) ** 2 for s in IMAGENET_STD]
        return keras.layers.Normalization(mean=mean, variance=var, name="imagenet_normalize")
    return keras.layers.Identity(name="raw_pixels")


def resolve_weights(weights: str) -> str | None:
    """'imagenet' (downloaded by Keras), 'none' (from scratch), or an existing weights file path."""
    if weights == "imagenet":
        return "imagenet"
    if from_scratch(weights):
        return None
    if not Path(weights).is_file():
        raise FileNotFoundError(f"model.weights: weights file {weights} does not exist")
    return weights


def build_backbone(m: Model, any_size: bool = False):
    """The headless backbone with global average pooling (Xception at any width and depth, else keras.applications);
    any_size: for images of any height and width, not only model.image_size."""
    import keras

    size, weights = None if any_size else m.image_size, resolve_weights(m.weights)
    try:
        if m.arch == "xception":
            return xception.build(size, m.width, m.middle_blocks, weights)
        ctor = getattr(keras.applications, BACKBONES[m.arch].constructor)
        return ctor(include_top=False, weights=weights, input_shape=(size, size, 3), pooling="avg")
    except Exception as exc:
        if weights not in (None, "imagenet"):  # a file: Keras's own error names neither the file nor the param
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            shape = f"image_size {m.image_size}" + (f", width {m.width:g}, middle_blocks {m.middle_blocks}"
                                                    if m.arch == "xception" else "")
            raise UserError(f"model.weights: {weights} is not a weights file this {m.arch} ({shape}) can load: "
                            f"{first[:300]}") from None
        if weights != "imagenet" or "URL fetch failure" not in str(exc):
            raise
        raise UserError(f"model.weights: imagenet: Keras could not download the {m.arch} ImageNet weights "
                        f"({str(exc).split(': ')[0].removeprefix('URL fetch failure on ')}). Offline: download that "
                        "file elsewhere and set model.weights to its path (or put it in ~/.keras/models/), or train "
                        "from scratch with model.weights=none") from None


def build_model(m: Model, num_classes: int, bn_momentum: float | None = None, any_size: bool = False):
    """Raw-pixel classifier: scaling, backbone (in inference mode when pretrained), dropout, softmax head; any_size:
    one that takes images of any size (progressive resizing trains one; saving.inference_copy fixes its size)."""
    import keras

    arch, image_size, dropout = m.arch, None if any_size else m.image_size, m.dropout
    backbone = build_backbone(m, any_size)
    pretrained = resolve_weights(m.weights) is not None
    if bn_momentum is not None:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    inputs = keras.Input((image_size, image_size, 3), name=INPUT_NAME)
    x = scaling_layer(BACKBONES[arch].scaling)(inputs)
    # A pretrained backbone keeps BatchNorm in inference mode, also while fine-tuning (Keras transfer guide).
    x = backbone(x, training=False) if pretrained else backbone(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name=f"{arch}_classifier")


def features_model(m: Model):
    """Raw pixels to the pooled features of a pretrained backbone: build_model's graph up to its dropout, no head."""
    import keras

    inputs = keras.Input((m.image_size, m.image_size, 3), name=INPUT_NAME)
    x = scaling_layer(BACKBONES[m.arch].scaling)(inputs)
    return keras.Model(inputs, build_backbone(m)(x, training=False), name="features")


def batch_norm_layers(model) -> list:
    """Every BatchNormalization layer of a model, nested backbones included."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(batch_norm_layers(layer))
    return found


def feature_extractor(model):
    """The part of a built model up to the pooled backbone features."""
    import keras

    return keras.Model(model.inputs, model.get_layer("dropout").input, name="features")


def backbone_of(model):
    """The nested keras.applications backbone inside a built model."""
    import keras

    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def load_model(path: str | Path):
    """Load a .keras model saved by the train stage, naming the file on failure."""
    import keras

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: model file not found (run the train stage)")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise FormatError(f"{path}: not a loadable Keras model ({exc.__class__.__name__}: {exc})") from None
