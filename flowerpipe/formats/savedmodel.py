"""TensorFlow SavedModel in TF Serving's layout, with raw-pixel, uint8 and encoded-image signatures."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from flowerpipe.formats.base import LABELS_FILE, Format, FormatError, Runner, Skipped, require, start_tensorflow
from flowerpipe.measure.devices import tensorflow_gpu_missing
from flowerpipe.pipeline.outputs import atomic


def build_module(model, classes: list[str], image_size: int):
    """A tf.Module with the serving signatures that tracks exactly the tf.Variables they read, once.

    The Keras model is reached through a closure, not an attribute: tracking it would save its Keras
    variables beside the tf.Variables the graphs capture (twice the size, as Keras' own export does),
    and the TF1/C++ loader that TF Serving uses could not find the captured ones.
    """
    import tensorflow as tf

    from flowerpipe.data.images import decode_resize

    names = tf.constant(classes)

    def outputs(images):
        probs = tf.cast(model(images, training=False), tf.float32)
        index = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return {"probabilities": probs, "class_index": index, "class_name": tf.gather(names, index)}

    def decode(image_bytes):
        return tf.map_fn(lambda b: decode_resize(b, image_size), image_bytes,
                         fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))

    pixels = [image_size, image_size, 3]
    module = tf.Module()
    module.serve_float = tf.function(outputs, input_signature=[tf.TensorSpec([None, *pixels], tf.float32,
                                                                             name="image")])
    module.serve_uint8 = tf.function(lambda image: outputs(tf.cast(image, tf.float32)),
                                     input_signature=[tf.TensorSpec([None, *pixels], tf.uint8, name="image")])
    module.serve_bytes = tf.function(lambda image_bytes: outputs(decode(image_bytes)),
                                     input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    captured = {}
    for fn in (module.serve_float, module.serve_uint8, module.serve_bytes):
        for v in fn.get_concrete_function().variables:
            captured[id(v)] = v
    module.model_variables = list(captured.values())
    return module


def export(model, classes: list[str], image_size: int, out: Path, extra=None) -> Path:
    """Write a SavedModel to out (a versioned folder), atomically; class names go in assets/labels.txt.

    extra(folder), when given, adds files to the new folder before it takes out's name (TF Serving's warm-up file).
    """
    import tensorflow as tf

    module = build_module(model, classes, image_size)
    with atomic(out) as tmp, tempfile.TemporaryDirectory() as scratch:
        labels = Path(scratch) / LABELS_FILE
        labels.write_text("\n".join(classes) + "\n")
        module.labels_asset = tf.saved_model.Asset(str(labels))
        tf.saved_model.save(module, str(tmp), signatures={
            "serving_default": module.serve_float,
            "serving_uint8": module.serve_uint8,
            "serving_bytes": module.serve_bytes,
        })
        if extra is not None:
            extra(tmp)
    return out


def export_probabilities(keras_path: Path, out: Path) -> Path:
    """Keras' own export (one float32 signature, one output): the conversion source for TFLite and OpenVINO."""
    from flowerpipe.model.build import load_model

    load_model(keras_path).export(str(out), format="tf_saved_model", verbose=False)
    return out


class SavedModelRunner(Runner):
    """Calls the serving_default signature's concrete function directly."""

    def __init__(self, path: Path, device: str = "cpu"):
        import tensorflow as tf

        self.device = device
        self._dev = "/GPU:0" if device == "gpu" else "/CPU:0"
        if device == "gpu" and (reason := tensorflow_gpu_missing()):
            raise Skipped(reason)  # tf.device would run it on the CPU without a word: no such GPU row
        try:
            with tf.device(self._dev):
                self.loaded = tf.saved_model.load(str(require(path, "SavedModel")))
        except (OSError, ValueError, tf.errors.OpError) as exc:
            raise FormatError(f"{path}: not a loadable SavedModel ({exc.__class__.__name__})") from None
        self.fn = self.loaded.signatures["serving_default"]
        self.image_size = int(next(iter(self.fn.structured_input_signature[1].values())).shape[1] or 0)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities from serving_default."""
        import tensorflow as tf

        with tf.device(self._dev):
            return self.fn(image=tf.convert_to_tensor(images, tf.float32))["probabilities"].numpy()


DEVICES = {"cpu": "", "gpu": ""}  # device -> "" (may run there) or why it never can


def version_dir(p) -> Path:
    """<paths.serving>/<model.name>/<export.version>: TF Serving's layout."""
    return Path(p.paths.serving) / p.model.name / str(p.export.version)


# Made by the export stage (its own entry in dvc.yaml); a folder holding saved_model.pb, found as such by the server.
FORMAT = Format(
    family="savedmodel", options=("",), path=lambda p, option: version_dir(p), precision={"": "float32"},
    devices=DEVICES, platform="tensorflow_savedmodel", order=1, serve_rank=3, stage="export", convert_stage=False,
    outs=("${paths.serving}",),
)


def load(path: Path, option: str = "", device: str = "cpu", threads: int = 0) -> Runner:
    """Load the exported SavedModel."""
    start_tensorflow(threads)
    return SavedModelRunner(path, device)
