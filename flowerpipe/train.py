"""Training: strategy choice, transfer-learning or from-scratch schedule, resumable checkpoints, history."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowerpipe.data import tfrecord
from flowerpipe.errors import UserError
from flowerpipe.jsonio import write_json
from flowerpipe.model import OUTPUT_NAME, backbone_of, build_model, feature_extractor, resolve_weights
from flowerpipe.params import Model, Train

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- distribution


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


def use_mixed_precision(setting: str, gpus: int) -> bool:
    """Whether `train.mixed_precision` turns on mixed_float16 here."""
    return setting == "on" or (setting == "auto" and gpus > 0)


# ---------------------------------------------------------------- results


@dataclass
class Result:
    """What a training run produced."""

    history: list[dict] = field(default_factory=list)
    best_val_accuracy: float = 0.0
    epochs_run: int = 0
    images_seen: int = 0
    train_seconds: float = 0.0
    replicas: int = 1
    strategy: str = "default"
    mixed_precision: bool = False
    resumed_from: str = ""


# The Keras log keys dvclive records each epoch: dvclive/plots/metrics/<key>.tsv and dvclive/metrics.json.
# Flat names, so that `dvc exp show` columns never look like params (train.*) and --drop can pick them.
LIVE_NAMES = {"loss": "loss", "accuracy": "accuracy", "val_loss": "val_loss", "val_accuracy": "val_accuracy"}


class EpochLog:
    """Where each finished epoch goes: dvclive (metrics.json, plots, step), the run's history and its checkpoint."""

    def __init__(self, live, result: Result, ckpt: Checkpoints):
        self.live, self.result, self.ckpt = live, result, ckpt

    def epoch(self, phase: str, logs: dict, images: int, seconds: float, replay: bool = False) -> None:
        """Record one epoch (replay: an epoch an interrupted run already trained, logged again, not counted)."""
        row = {"epoch": len(self.result.history) + 1, "phase": phase,
               **{k: float(v) for k, v in logs.items() if k in LIVE_NAMES},
               "seconds": round(seconds, 3), "images_per_second": round(images / seconds, 3) if seconds else 0.0}
        self.result.history.append(row)
        if not replay:
            self.result.images_seen += images
            self.result.train_seconds += seconds
            self.ckpt.record(phase, row)
        for key, name in LIVE_NAMES.items():
            if key in row and math.isfinite(row[key]):  # dvclive would store a diverged NaN as a string
                self.live.log_metric(name, row[key])
        self.live.next_step()

    def replay(self, rows: list[dict]) -> None:
        """Log again the epochs of a phase an interrupted run finished (or began), so the curves stay whole."""
        for row in rows:
            self.epoch(row["phase"], row, 0, row.get("seconds", 0.0), replay=True)

    def callback(self, phase: str, images_per_epoch: int):
        """A Keras callback that records each epoch of a fit() phase."""
        import keras

        log = self

        class _Epochs(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                """Start the epoch's clock."""
                self._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                """Record the epoch's logs, time and images/s."""
                log.epoch(phase, logs or {}, images_per_epoch, time.perf_counter() - self._t)

        return _Epochs()


# ---------------------------------------------------------------- checkpoints


def fingerprint(model: Model, train: Train, manifest_path: Path) -> str:
    """What a checkpoint belongs to: params that change training, and the dataset manifest."""
    h = hashlib.sha256()
    h.update(model.model_dump_json(exclude={"name"}).encode())  # the served name does not change training
    h.update(train.model_dump_json(exclude={"patience"}).encode())
    h.update(manifest_path.read_bytes())
    return h.hexdigest()[:16]


class Checkpoints:
    """Per-phase weights and a backup for BackupAndRestore, kept only for one fingerprint."""

    def __init__(self, folder: Path, key: str):
        self.folder = folder
        state = folder / "state.json"
        if state.exists() and json.loads(state.read_text()).get("key") != key:
            log.info("checkpoints in %s belong to other params or data: starting fresh", folder)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.state_path = state
        self.state = json.loads(state.read_text()) if state.exists() else {"key": key, "done": {}}
        self.state.setdefault("running", {})

    def done(self, phase: str) -> Path | None:
        """Weights saved at the end of a finished phase, if any."""
        entry = self.state["done"].get(phase)
        return self.folder / entry["weights"] if entry else None

    def history(self, phase: str) -> list[dict]:
        """The epochs a phase ran: all of them once finished, else those before an interruption."""
        done = self.state["done"].get(phase)
        return done["history"] if done else self.state["running"].get(phase, [])

    def record(self, phase: str, row: dict) -> None:
        """Keep an epoch of the running phase, so a resumed run logs the epochs it does not train again."""
        self.state["running"].setdefault(phase, []).append(row)
        self._save()

    def finish(self, phase: str, model, history: list[dict]) -> None:
        """Record a finished phase with its final (best) weights."""
        name = f"{phase}.weights.h5"
        model.save_weights(self.folder / name)
        self.state["done"][phase] = {"weights": name, "history": history}
        self.state["running"].pop(phase, None)
        self._save()

    def _save(self) -> None:
        write_json(self.state_path, self.state)

    def backup_dir(self, phase: str) -> Path:
        """Where BackupAndRestore keeps the running phase's state."""
        return self.folder / f"backup-{phase}"

    def clear(self) -> None:
        """Remove everything once the run has finished."""
        shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------- training


def augmenter(seed: int):
    """Light augmentation for flowers: flips, small rotations, zoom and contrast."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.08, seed=seed),
        keras.layers.RandomZoom(0.15, seed=seed),
        keras.layers.RandomContrast(0.15, seed=seed),
    ], name="augment")


def _datasets(data_dir: Path, image_size: int, global_batch: int, train: Train, augment: bool, num_classes: int,
              replicas: int = 1, n_val: int = 0):
    """Train and val datasets with one-hot labels (for label smoothing), sharded by data for multi-worker.

    With several replicas every batch must split evenly (keras-team/keras#19246), so the last partial
    validation batch is dropped there.
    """
    import tensorflow as tf

    def onehot(x, y):
        return x, tf.one_hot(y, num_classes)

    train_ds = tfrecord.dataset(data_dir, "train", image_size, global_batch, shuffle=True, seed=train.seed,
                                repeat=True, drop_remainder=True)
    if augment:
        aug = augmenter(train.seed)
        train_ds = train_ds.map(lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    if replicas > 1:
        val_batch = min(global_batch, (n_val // replicas) * replicas) or replicas
        val_ds = tfrecord.dataset(data_dir, "val", image_size, val_batch, drop_remainder=True)
    else:
        val_ds = tfrecord.dataset(data_dir, "val", image_size, global_batch)
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return (train_ds.map(onehot).prefetch(tf.data.AUTOTUNE).with_options(opts),
            val_ds.map(onehot).with_options(opts))


def _compile(model, learning_rate: float, label_smoothing: float) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                  metrics=["accuracy"])


@dataclass
class Run:
    """One training run: its params, data sizes, strategy, checkpoints and epoch log, passed as one object."""

    data_dir: Path
    m: Model
    p: Train
    strategy: object
    num_classes: int
    n_train: int
    n_val: int
    batch: int
    ckpt: Checkpoints
    log: EpochLog
    result: Result

    def datasets(self):
        """Train and val datasets for a fit() phase (augmented when train.augment is on)."""
        return _datasets(self.data_dir, self.m.image_size, self.batch, self.p, self.p.augment, self.num_classes,
                         self.result.replicas, self.n_val)

    def callbacks(self, phase: str, images_per_epoch: int, has_val: bool) -> list:
        """The epoch log first (so an epoch is recorded before its backup), then resume and early stopping."""
        import keras

        cbs = [self.log.callback(phase, images_per_epoch),
               keras.callbacks.BackupAndRestore(str(self.ckpt.backup_dir(phase)), delete_checkpoint=True)]
        if self.p.patience and has_val:
            cbs.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=self.p.patience,
                                                     restore_best_weights=True, mode="max"))
        return cbs

    def resume(self, phase: str, model) -> bool:
        """Log again what an interrupted run did in this phase; if it finished the phase, load its weights."""
        self.log.replay(self.ckpt.history(phase))
        done = self.ckpt.done(phase)
        if done is None:
            return False
        model.load_weights(done)
        self.result.resumed_from = phase
        log.info("phase %s already finished: weights restored from %s", phase, done)
        return True


def _steps(n: int, batch: int, cap: int) -> int:
    steps = max(1, -(-n // batch))
    return min(steps, cap) if cap else steps


def _fit_phase(run: Run, model, phase: str, epochs: int, lr: float) -> None:
    """One Keras fit() for a phase, resumable through BackupAndRestore; skipped if already finished."""
    start = len(run.result.history)
    if run.resume(phase, model) or epochs == 0:
        return
    steps = _steps(run.n_train, run.batch, run.p.max_steps_per_epoch)
    train_ds, val_ds = run.datasets()
    with run.strategy.scope():
        if run.result.strategy == "multi_worker":
            _fit_multi_worker(run, model, phase, epochs, lr, train_ds, val_ds if run.n_val else None, steps)
        else:
            _compile(model, lr, run.p.label_smoothing)
            model.fit(train_ds, validation_data=val_ds if run.n_val else None, epochs=epochs, steps_per_epoch=steps,
                      verbose=2, callbacks=run.callbacks(phase, min(run.n_train, steps * run.batch), run.n_val > 0))
    run.ckpt.finish(phase, model, run.result.history[start:])


def _fit_multi_worker(run: Run, model, phase, epochs, lr, train_ds, val_ds, steps) -> None:
    """A plain strategy.run loop for MultiWorkerMirroredStrategy, where Keras 3.15's fit() fails.

    Keras all-reduces the first input batch and its scalar logs with axis=0 under MWMS; this loop
    reduces only losses and counts. Same loss, optimizer and per-epoch log as fit(); no early stopping.
    """
    import keras
    import tensorflow as tf

    strategy, batch, p = run.strategy, run.batch, run.p
    optimizer = keras.optimizers.Adam(lr)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # what compile() adds under mixed_float16
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=p.label_smoothing, reduction="none")

    def correct(y, probs):
        return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probs, 1), tf.argmax(y, 1)), tf.float32))

    @tf.function
    def train_step(iterator):
        def step(x, y):
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                loss = tf.nn.compute_average_loss(loss_fn(y, probs), global_batch_size=batch)
                scaled = optimizer.scale_loss(loss) if hasattr(optimizer, "scale_loss") else loss
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss, correct(y, probs)

        loss, right = strategy.run(step, args=next(iterator))
        return strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", right, axis=None)

    @tf.function
    def val_step(x, y):
        def step(x, y):
            probs = model(x, training=False)
            return tf.reduce_sum(loss_fn(y, probs)), correct(y, probs), tf.cast(tf.shape(y)[0], tf.float32)

        out = strategy.run(step, args=(x, y))
        return [strategy.reduce("SUM", v, axis=None) for v in out]

    iterator = iter(strategy.experimental_distribute_dataset(train_ds))
    for epoch in range(epochs):
        t = time.perf_counter()
        loss_sum = right_sum = 0.0
        for _ in range(steps):
            loss, right = train_step(iterator)
            loss_sum, right_sum = loss_sum + float(loss), right_sum + float(right)
        logs = {"loss": loss_sum / steps, "accuracy": right_sum / (steps * batch)}
        if val_ds is not None:
            totals = np.zeros(3)
            for x, y in strategy.experimental_distribute_dataset(val_ds):
                totals += [float(v) for v in val_step(x, y)]
            logs.update(val_loss=totals[0] / max(totals[2], 1), val_accuracy=totals[1] / max(totals[2], 1))
        print(f"epoch {epoch + 1}/{epochs} " + " ".join(f"{k}={v:.4f}" for k, v in logs.items()), flush=True)
        run.log.epoch(phase, logs, steps * batch, time.perf_counter() - t)


def _head_on_cached_features(run: Run, model) -> None:
    """Frozen-backbone phase: compute backbone features once, train only the head on them."""
    import keras
    import tensorflow as tf

    phase, p, m, batch = "head", run.p, run.m, run.batch
    start = len(run.result.history)
    if run.resume(phase, model):
        return
    extractor = feature_extractor(model)
    t0 = time.perf_counter()
    feats = {}
    for split in ("train", "val"):
        xs, ys = [], []
        for x, y in tfrecord.dataset(run.data_dir, split, m.image_size, batch):
            xs.append(extractor(x, training=False).numpy())
            ys.append(y.numpy())
        feats[split] = (np.concatenate(xs), np.concatenate(ys)) if xs else None
    extract_secs = time.perf_counter() - t0
    fx, fy = feats["train"]
    head = keras.Sequential([keras.Input((fx.shape[1],)), keras.layers.Dropout(m.dropout),
                             keras.layers.Dense(run.num_classes, activation="softmax", dtype="float32")])
    _compile(head, p.learning_rate, p.label_smoothing)
    onehot = np.eye(run.num_classes, dtype=np.float32)
    train_ds = tf.data.Dataset.from_tensor_slices((fx, onehot[fy])).shuffle(len(fx), seed=p.seed).batch(batch)
    val = feats["val"]
    val_ds = tf.data.Dataset.from_tensor_slices((val[0], onehot[val[1]])).batch(batch) if val else None
    run.result.train_seconds += extract_secs  # the one full forward pass counts as training time
    head.fit(train_ds, validation_data=val_ds, epochs=p.epochs, verbose=2,
             callbacks=run.callbacks(phase, len(fx), val is not None))
    model.get_layer(OUTPUT_NAME).set_weights(head.layers[-1].get_weights())
    run.ckpt.finish(phase, model, run.result.history[start:])


def float32_config(config):
    """A Keras config with every mixed-precision layer policy replaced by float32 (from_config keeps them)."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and str(config.get("config", {}).get("name", "")).startswith(
                "mixed_"):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {k: float32_config(v) for k, v in config.items()}
    if isinstance(config, list):
        return [float32_config(v) for v in config]
    return config


def inference_copy(model):
    """The same architecture and weights without optimizer state, computing in float32, ready to save."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    copy = keras.Model.from_config(float32_config(model.get_config()))
    copy.set_weights(model.get_weights())  # mixed-precision variables are float32 already
    return copy


def accuracy_on(model, data_dir: Path, split: str, image_size: int, batch: int) -> float:
    """Top-1 accuracy of a model on one split (the saved weights' own figure, not an epoch's)."""
    right = total = 0
    for x, y in tfrecord.dataset(data_dir, split, image_size, batch):
        right += int((model(x, training=False).numpy().argmax(1) == y.numpy()).sum())
        total += len(y)
    return right / total if total else 0.0


def fit(data_dir: Path, m: Model, p: Train, checkpoint_dir: Path, live):
    """Train a classifier on the TFRecords, logging each epoch to a dvclive Live; return (model, Result, ckpt).

    Resumes from checkpoint_dir when it belongs to the same params and data.
    """
    import keras
    import tensorflow as tf

    strategy = make_strategy(p.strategy)  # first: collective ops must be configured before any other TF work
    keras.utils.set_random_seed(p.seed)
    if p.deterministic:
        tf.config.experimental.enable_op_determinism()
    manifest = tfrecord.Manifest.read(data_dir)
    n_train, n_val = manifest.count("train"), manifest.count("val")
    if n_train == 0:
        raise UserError(f"{data_dir}: the train split is empty")
    gpus = len(tf.config.list_physical_devices("GPU"))
    mixed = use_mixed_precision(p.mixed_precision, gpus)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    replicas = strategy.num_replicas_in_sync
    kind = ("multi_worker" if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            else "mirrored" if isinstance(strategy, tf.distribute.MirroredStrategy) else "default")
    result = Result(replicas=replicas, strategy=kind, mixed_precision=mixed)
    ckpt = Checkpoints(checkpoint_dir, fingerprint(m, p, data_dir / tfrecord.MANIFEST))
    run = Run(data_dir, m, p, strategy, len(manifest.classes), n_train, n_val, p.batch_size * replicas, ckpt,
              EpochLog(live, result, ckpt), result)
    pretrained = resolve_weights(m.weights) is not None
    with strategy.scope():
        model = build_model(m.arch, m.image_size, run.num_classes, m.weights, m.dropout,
                            bn_momentum=None if pretrained else p.scratch_bn_momentum)
    if pretrained:
        backbone = backbone_of(model)
        backbone.trainable = False
        if p.cache_features and p.epochs and replicas == 1:
            _head_on_cached_features(run, model)
        else:
            _fit_phase(run, model, "head", p.epochs, p.learning_rate)
        if p.fine_tune_epochs:
            backbone.trainable = True
            cut = max(0, len(backbone.layers) - p.fine_tune_layers) if p.fine_tune_layers else 0
            for layer in backbone.layers[:cut]:
                layer.trainable = False
            for layer in backbone.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
            _fit_phase(run, model, "fine_tune", p.fine_tune_epochs, p.fine_tune_learning_rate)
    else:
        _fit_phase(run, model, "scratch", p.scratch_epochs, p.scratch_learning_rate)
    result.epochs_run = len(result.history)
    vals = [h["val_accuracy"] for h in result.history if "val_accuracy" in h]
    result.best_val_accuracy = max(vals) if vals else 0.0
    return model, result, ckpt
