"""Training, top to bottom: strategy and precision, data sizes, checkpoints, then the transfer or scratch schedule."""

from __future__ import annotations

from pathlib import Path

from flowerpipe.cpu import bf16_missing
from flowerpipe.data import tfrecord
from flowerpipe.errors import UserError
from flowerpipe.model import backbone_of, batch_norm_layers, build_model, resolve_weights
from flowerpipe.params import Model, Train
from flowerpipe.training.checkpoints import Checkpoints, fingerprint
from flowerpipe.training.epochs import EpochLog, Result
from flowerpipe.training.loops import Run, fit_phase, head_on_cached_features
from flowerpipe.training.strategy import kind_of, make_strategy, precision_policy


def freeze_for_fine_tuning(backbone, layers: int) -> None:
    """Unfreeze the top `layers` layers of the backbone (0 = all); every BatchNorm stays frozen."""
    import keras

    backbone.trainable = True
    cut = max(0, len(backbone.layers) - layers) if layers else 0
    for layer in backbone.layers[:cut]:
        layer.trainable = False
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def fit(data_dir: Path, m: Model, p: Train, checkpoint_dir: Path, live, features_dir: Path | None = None):
    """Train a classifier on the TFRecords, logging each epoch to a dvclive Live; return (model, Result, ckpt).

    Resumes from checkpoint_dir when it belongs to the same params and data; the frozen-backbone phase reuses
    the features in features_dir when they belong to this backbone and data.
    """
    import keras
    import tensorflow as tf

    pretrained = resolve_weights(m.weights) is not None  # a missing weights file stops here, before any TF work
    strategy = make_strategy(p.strategy)  # first: collective ops must be configured before any other TF work
    keras.utils.set_random_seed(p.seed)
    if p.deterministic:
        tf.config.experimental.enable_op_determinism()
    manifest = tfrecord.Manifest.read(data_dir)
    n_train, n_val = manifest.count("train"), manifest.count("val")
    if n_train == 0:
        raise UserError(f"{data_dir}: the train split is empty")
    policy = precision_policy(p.mixed_precision, len(tf.config.list_physical_devices("GPU")), bf16_missing())
    keras.mixed_precision.set_global_policy(policy)
    replicas = strategy.num_replicas_in_sync
    result = Result(replicas=replicas, strategy=kind_of(strategy), precision=policy)
    ckpt = Checkpoints(checkpoint_dir, fingerprint(m, p, data_dir / tfrecord.MANIFEST))
    run = Run(data_dir, m, p, strategy, len(manifest.classes), n_train, n_val, p.batch_size * replicas, ckpt,
              EpochLog(live, result, ckpt), result, features_dir)
    with strategy.scope():
        model = build_model(m, run.num_classes, bn_momentum=None if pretrained else p.scratch_bn_momentum)
    if replicas > 1:
        # Batch statistics over the global batch: every replica then updates the moving mean and variance
        # alike, so every replica (and every worker's saved model) holds the same BatchNorm state.
        for layer in batch_norm_layers(model):
            layer.synchronized = True
    if pretrained:
        backbone = backbone_of(model)
        backbone.trainable = False
        if p.cache_features and p.epochs and replicas == 1:
            head_on_cached_features(run, model)
        else:
            fit_phase(run, model, "head", p.epochs, p.learning_rate)
        if p.fine_tune_epochs:
            freeze_for_fine_tuning(backbone, p.fine_tune_layers)
            fit_phase(run, model, "fine_tune", p.fine_tune_epochs, p.fine_tune_learning_rate)
    else:
        fit_phase(run, model, "scratch", p.scratch_epochs, p.scratch_learning_rate)
    result.epochs_run = len(result.history)
    return model, result, ckpt
