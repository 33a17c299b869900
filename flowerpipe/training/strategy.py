"""Which tf.distribute strategy and precision policy a run uses, from params, GPUs and TF_CONFIG."""

from __future__ import annotations

import json
import os

from flowerpipe.errors import UserError


def tf_config() -> dict:
    """The parsed TF_CONFIG environment variable ({} when unset)."""
    try:
        return json.loads(os.environ.get("TF_CONFIG", "{}"))
    except json.JSONDecodeError:
        raise UserError("TF_CONFIG is not valid JSON") from None


def tf_config_workers() -> int:
    """Number of workers TF_CONFIG declares (0 when unset)."""
    cluster = tf_config().get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def choose_strategy(name: str, gpus: int, workers: int) -> str:
    """Which tf.distribute strategy a `train.strategy` value means on this machine."""
    if name == "auto":
        if workers > 1:
            return "multi_worker"
        return "mirrored" if gpus > 1 else "default"
    if name == "ray":
        raise UserError("train.strategy: ray starts its workers through Ray Train (the train stage, "
                        "flowerpipe.scale.ray_train); each worker then trains as multi_worker")
    if name == "multi_worker" and workers < 1:
        raise UserError("train.strategy: multi_worker needs TF_CONFIG with a cluster of workers")
    return name


def make_strategy(name: str):
    """Build the tf.distribute strategy for a `train.strategy` value."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")  # physical: listing logical devices would start the runtime
    kind = choose_strategy(name, len(gpus), tf_config_workers())
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if kind == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in cpus]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def kind_of(strategy) -> str:
    """The `train.strategy` name of a built strategy object."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "multi_worker"
    return "mirrored" if isinstance(strategy, tf.distribute.MirroredStrategy) else "default"


def precision_policy(setting: str, gpus: int, bf16_missing: str) -> str:
    """The Keras dtype policy `train.mixed_precision` means here.

    auto: mixed_float16 with a GPU (tensor cores); mixed_bfloat16 on a CPU with native bfloat16
    (AVX512_BF16 or AMX: measured 1.37x float32 on a 2-core EPYC with AVX512_BF16); float32 otherwise,
    where bfloat16 would be emulated and slower. float16 or bfloat16 force that policy; off is float32.
    """
    if setting == "auto":
        if gpus:
            return "mixed_float16"
        return "float32" if bf16_missing else "mixed_bfloat16"
    return {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}.get(setting, "float32")
