"""Xception (Chollet, 2017) with a width multiplier and a middle-flow depth, Keras's own at the standard size."""

from __future__ import annotations

STANDARD_WIDTH = 1.0
STANDARD_MIDDLE_BLOCKS = 8  # the paper's middle flow: 8 repeats of three 728-channel separable convolutions


def channels(n: int, width: float) -> int:
    """n channels scaled by width, rounded to a multiple of 8 and never below 8 (as MobileNet scales)."""
    scaled = max(8, int(n * width + 4) // 8 * 8)
    return scaled + 8 if scaled < 0.9 * n * width else scaled


def is_standard(width: float, middle_blocks: int) -> bool:
    """Whether these are the published Xception's proportions (ImageNet weights exist only for those)."""
    return width == STANDARD_WIDTH and middle_blocks == STANDARD_MIDDLE_BLOCKS


def build(image_size: int | None, width: float = STANDARD_WIDTH, middle_blocks: int = STANDARD_MIDDLE_BLOCKS,
          weights: str | None = None):
    """Headless Xception with global average pooling; the standard size is keras.applications.Xception itself.

    Other sizes follow the same entry, middle and exit flows layer for layer with every channel count
    scaled by width and middle_blocks repeats in the middle flow; weights: None or a file this builder saved.
    """
    import keras

    if is_standard(width, middle_blocks):
        return keras.applications.Xception(include_top=False, weights=weights, pooling="avg",
                                           input_shape=(image_size, image_size, 3))
    model = scaled(image_size, width, middle_blocks)
    if weights is not None:
        model.load_weights(weights)
    return model


def scaled(image_size: int | None, width: float, middle_blocks: int):
    """The Xception graph with scaled channels and middle flow, every layer named (so saved weights reload)."""
    import keras

    layers = keras.layers

    def c(n: int) -> int:
        return channels(n, width)

    def sep(x, n: int, name: str, relu_first: bool = True):
        if relu_first:
            x = layers.Activation("relu", name=f"{name}_act")(x)
        x = layers.SeparableConv2D(c(n), 3, padding="same", use_bias=False, name=name)(x)
        return layers.BatchNormalization(name=f"{name}_bn")(x)

    def down(x, n_in: int, n_out: int, block: int, relu_first: bool = True):
        """Two separable convolutions and a strided max pool, added to a strided 1x1 projection."""
        residual = layers.Conv2D(c(n_out), 1, strides=2, padding="same", use_bias=False,
                                 name=f"block{block}_residual")(x)
        residual = layers.BatchNormalization(name=f"block{block}_residual_bn")(residual)
        x = sep(x, n_in, f"block{block}_sepconv1", relu_first)
        x = sep(x, n_out, f"block{block}_sepconv2")
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"block{block}_pool")(x)
        return layers.add([x, residual], name=f"block{block}_add")

    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Conv2D(c(32), 3, strides=2, use_bias=False, name="block1_conv1")(inputs)
    x = layers.Activation("relu", name="block1_conv1_act")(layers.BatchNormalization(name="block1_conv1_bn")(x))
    x = layers.Conv2D(c(64), 3, use_bias=False, name="block1_conv2")(x)
    x = layers.Activation("relu", name="block1_conv2_act")(layers.BatchNormalization(name="block1_conv2_bn")(x))
    x = down(x, 128, 128, 2, relu_first=False)
    x = down(x, 256, 256, 3)
    x = down(x, 728, 728, 4)
    for i in range(middle_blocks):
        block, residual = i + 5, x
        for j in (1, 2, 3):
            x = sep(x, 728, f"block{block}_sepconv{j}")
        x = layers.add([x, residual], name=f"block{block}_add")
    x = down(x, 728, 1024, 5 + middle_blocks)
    for j, n in ((1, 1536), (2, 2048)):
        name = f"block{6 + middle_blocks}_sepconv{j}"
        x = layers.SeparableConv2D(c(n), 3, padding="same", use_bias=False, name=name)(x)
        x = layers.Activation("relu", name=f"{name}_act")(layers.BatchNormalization(name=f"{name}_bn")(x))
    outputs = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, outputs, name=f"xception_w{width:g}_m{middle_blocks}")
