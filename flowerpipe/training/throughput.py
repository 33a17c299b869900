"""Training speed in the units that explain it: FLOPs per image counted from the layers (peaks: measure.peaks)."""

from __future__ import annotations

import math


def _leaves(model) -> list:
    """Every layer of a model that is not itself a model (nested backbones opened)."""
    import keras

    out = []
    for layer in model.layers:
        out.extend(_leaves(layer) if isinstance(layer, keras.Model) else [layer])
    return out


def layer_flops(layer) -> int:
    """Forward FLOPs per image of a convolution or dense layer: 2 x output positions x kernel size (0 for others).

    A kernel holds one multiply-add per input channel, tap and output channel at each output position;
    a separable convolution's depthwise and pointwise kernels both run at its output positions.
    """
    kernels = [w for w in layer.weights if w.path.rsplit("/", 1)[-1].endswith("kernel")]
    if not kernels:
        return 0
    positions = math.prod(int(d) for d in layer.output.shape[1:-1])  # H x W (1 for Dense)
    return 2 * positions * sum(math.prod(int(d) for d in k.shape) for k in kernels)


def training_flops(model, image_size: int | None = None) -> dict[str, int]:
    """FLOPs per image: a forward pass, and a training step (backward: 2x forward for each trainable layer); of
    image_size squares for a model that takes any size (counted on a copy of that size).

    The backward pass computes the gradient of each trainable layer's weights and of its input, each about
    as costly as its forward pass; frozen layers cost only their forward pass (their input gradient is not
    needed below the lowest trainable layer, and is small above it here). BatchNorm, activations and
    pooling are left out: under 2% of Xception's FLOPs.
    """
    if image_size and None in tuple(model.input_shape)[1:3]:
        import keras

        from flowerpipe.training.saving import inference_config

        sized = keras.Model.from_config(inference_config(model.get_config(), image_size))
        for mine, theirs in zip(_leaves(model), _leaves(sized), strict=True):
            theirs.trainable = mine.trainable
        model = sized
    forward = trainable = 0
    for layer in _leaves(model):
        f = layer_flops(layer)
        forward += f
        trainable += f if layer.trainable_weights else 0
    return {"forward": forward, "train_step": forward + 2 * trainable}
