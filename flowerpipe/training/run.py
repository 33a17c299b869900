"""Training, top to bottom: strategy and precision, data sizes, checkpoints, then the transfer or scratch schedule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowerpipe.data import tfrecord
from flowerpipe.errors import UserError
from flowerpipe.measure.cpu import bf16_missing
from flowerpipe.model.build import backbone_of, batch_norm_layers, build_model, resolve_weights
from flowerpipe.params import Model, Params, Train
from flowerpipe.training.checkpoints import Checkpoints, fingerprint
from flowerpipe.training.epochs import EpochLog, Result
from flowerpipe.training.loops import Run, fit_phase, head_on_cached_features, progressive_side
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
        model = build_model(m, run.num_classes, bn_momentum=None if pretrained else p.scratch_bn_momentum,
                            any_size=not pretrained and progressive_side(m, p, "scratch") is not None)
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


COMPUTE_DTYPES = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


@dataclass(frozen=True)
class Outputs:
    """Where one training process writes: the model, its checkpoints' folder, the dvclive folder, the report."""

    model: Path
    train_dir: Path
    live: Path
    reports: Path

    @classmethod
    def of(cls, p: Params) -> Outputs:
        """The train stage's declared outputs."""
        return cls(Path(p.paths.model), Path(p.paths.train_dir), Path(p.paths.live), Path(p.paths.reports))

    def for_worker(self, rank: int) -> Outputs:
        """Worker `rank`'s copy of the outputs: the same files under <train_dir>/workers/<rank>/ (workers on one
        machine share a checkout, and each needs checkpoints of its own)."""
        base = self.train_dir / "workers" / str(rank)
        return Outputs(base / self.model.name, base, base / "dvclive", base / "reports")


def train_and_save(p: Params, strategy: str | None = None, out: Outputs | None = None,
                   extra: dict | None = None) -> dict:
    """The train stage's work in one call: fit, save the float32 inference copy, log and record; return the record.

    strategy overrides train.strategy (Ray Train's workers run this with "multi_worker"); out, where to write;
    extra, more keys for the record (how the run was launched).
    """
    from dvclive import Live

    from flowerpipe.jsonio import write_json
    from flowerpipe.measure import peaks
    from flowerpipe.measure.devices import tensorflow_gpu_missing
    from flowerpipe.pipeline.outputs import atomic
    from flowerpipe.training.saving import accuracy_on, inference_copy

    out = out or Outputs.of(p)
    t = p.train if strategy is None else p.train.model_copy(update={"strategy": strategy})
    with Live(str(out.live), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        model, result, ckpt = fit(Path(p.paths.tfrecords), p.model, t, out.train_dir / "checkpoints", live,
                                  Path(p.paths.features))
        saved = inference_copy(model, p.model.image_size)
        with atomic(out.model) as tmp:  # in place only once the whole stage's work is done
            saved.save(tmp)  # weights only: no optimizer state (a third of the size)
            val_accuracy = accuracy_on(saved, Path(p.paths.tfrecords), "val", p.model.image_size, t.batch_size)
            live.log_metric("model_val_accuracy", round(val_accuracy, 4), plot=False)
            live.log_metric("train_seconds", round(result.train_seconds, 1), plot=False)
            secs = result.train_seconds or float("inf")
            rate, gflops = result.images_seen / secs, result.flops / secs / 1e9
            # The share of what this device's matmuls reach in the precision training computed in.
            device = "cpu" if tensorflow_gpu_missing() else "gpu"
            precision = COMPUTE_DTYPES.get(result.precision, "float32")
            measured = peaks.measure(device, peaks.needed([(device, precision)]).get(device, []))
            peak, against = peaks.peak_for(measured, device, precision)
            fraction = gflops / peak if peak else None
            live.log_metric("train_img_s", round(rate, 2), plot=False)
            if fraction is not None:
                live.log_metric("train_peak_frac", round(fraction, 3), plot=False)
    record = {
        "saved_model_val_accuracy": round(val_accuracy, 4),
        "best_epoch_val_accuracy": round(result.best_val_accuracy, 4),
        "epochs_run": result.epochs_run, "train_seconds": round(result.train_seconds, 1),
        "scratch_minutes": t.scratch_minutes, "budget_epochs": result.budget_epochs,
        "images_per_second": round(rate, 2), "gflops_per_second": round(gflops, 3),
        "matmul_peak_gflops": round(peak or 0.0, 1), "peak": against,
        **({"fraction_of_peak": round(fraction, 4)} if fraction is not None else {}),
        "replicas": result.replicas, "strategy": result.strategy, "precision": result.precision,
        "head_features": result.features, "resumed_from": result.resumed_from, "history": result.history,
    }
    record.update(extra or {})
    write_json(out.reports / "train.json", record)
    ckpt.clear()
    print(f"val accuracy of the saved model {val_accuracy:.4f} after {result.epochs_run} epochs -> {out.model}")
    return record
