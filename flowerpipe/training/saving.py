"""The model the train stage saves: float32 compute, no optimizer state, and its own measured accuracy."""

from __future__ import annotations

from pathlib import Path

from flowerpipe.data import tfrecord


def inference_config(config, image_size: int | None = None):
    """A config for one float32 device: mixed policies become float32 (from_config keeps them), BatchNorm unsynced,
    and inputs of any size (progressive resizing's) image_size square."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and str(config.get("config", {}).get("name", "")).startswith(
                "mixed_"):
            return {**config, "config": {**config["config"], "name": "float32"}}
        out = {k: inference_config(v, image_size) for k, v in config.items()}
        if out.get("synchronized") is True:
            out["synchronized"] = False
        shape = out.get("batch_shape")
        if image_size and out.get("class_name") is None and isinstance(shape, list | tuple) and len(shape) == 4 \
                and shape[1] is None and shape[2] is None:
            out["batch_shape"] = [shape[0], image_size, image_size, shape[3]]
        return out
    if isinstance(config, list):
        return [inference_config(v, image_size) for v in config]
    return config


def inference_copy(model, image_size: int | None = None):
    """The same architecture and weights without optimizer state, computing in float32, ready to save; a model
    trained on images of any size takes image_size squares."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    copy = keras.Model.from_config(inference_config(model.get_config(), image_size))
    copy.set_weights(model.get_weights())  # mixed-precision variables are float32 already
    return copy


def accuracy_on(model, data_dir: Path, split: str, image_size: int, batch: int, flip: bool = False) -> float:
    """Top-1 accuracy of a model on one split (the saved weights' own figure, not an epoch's); flip: of the mean of
    its answers for each photo and its mirror image (test-time flip averaging, twice the inference)."""
    right = total = 0
    for x, y in tfrecord.dataset(data_dir, split, image_size, batch):
        probs = model(x, training=False).numpy()
        if flip:
            probs = probs + model(x[:, :, ::-1, :], training=False).numpy()
        right += int((probs.argmax(1) == y.numpy()).sum())
        total += len(y)
    return right / total if total else 0.0
