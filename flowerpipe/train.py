"""Training: strategy choice, transfer-learning or from-scratch schedule, resumable checkpoints, history."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flowerpipe.data import tfrecord
from flowerpipe.model import OUTPUT_NAME, backbone_of, build_model, feature_extractor, resolve_weights
from flowerpipe.params import Model, Train
from flowerpipe.stage import StageError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- distribution


def tf_config() -> dict:
    """The parsed TF_CONFIG environment variable ({} when unset)."""
    try:
        return json.loads(os.environ.get("TF_CONFIG", "{}"))
    except json.JSONDecodeError:
        raise StageError("TF_CONFIG is not valid JSON") from None


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
        raise StageError("train.strategy: multi_worker needs TF_CONFIG with a cluster of workers")
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


def is_chief() -> bool:
    """True unless TF_CONFIG names this process a non-chief worker."""
    config = tf_config()
    task, cluster = config.get("task", {}), config.get("cluster", {})
    if not task:
        return True
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


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


def history_callback(result: Result, phase: str, images_per_epoch: int):
    """A Keras callback that appends each epoch's logs to result.history, tagged with phase and global epoch."""
    import keras

    class _History(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            """Start the epoch's clock."""
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            """Record the epoch's logs, time and images/s."""
            secs = time.perf_counter() - self._t
            row = {"epoch": len(result.history) + 1, "phase": phase,
                   **{k: float(v) for k, v in (logs or {}).items() if k in _KEYS}, "seconds": round(secs, 3),
                   "images_per_second": round(images_per_epoch / secs, 3) if secs else 0.0}
            result.history.append(row)
            result.images_seen += images_per_epoch
            result.train_seconds += secs

    return _History()


_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


# ---------------------------------------------------------------- checkpoints


def fingerprint(model: Model, train: Train, manifest_path: Path) -> str:
    """What a checkpoint belongs to: params that change training, and the dataset manifest."""
    h = hashlib.sha256()
    h.update(model.model_dump_json().encode())
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

    def done(self, phase: str) -> Path | None:
        """Weights saved at the end of a finished phase, if any."""
        entry = self.state["done"].get(phase)
        return self.folder / entry["weights"] if entry else None

    def history(self, phase: str) -> list[dict]:
        """The epochs a finished phase ran."""
        return self.state["done"].get(phase, {}).get("history", [])

    def finish(self, phase: str, model, history: list[dict]) -> None:
        """Record a finished phase with its final (best) weights."""
        name = f"{phase}.weights.h5"
        model.save_weights(self.folder / name)
        self.state["done"][phase] = {"weights": name, "history": history}
        self.state_path.write_text(json.dumps(self.state, indent=2))

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


def _callbacks(result: Result, phase: str, n_train: int, patience: int, backup: Path, has_val: bool):
    import keras

    cbs = [keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=True),
           history_callback(result, phase, n_train)]
    if patience and has_val:
        cbs.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=patience,
                                                 restore_best_weights=True, mode="max"))
    return cbs


def _steps(n: int, batch: int, cap: int) -> int:
    steps = max(1, -(-n // batch))
    return min(steps, cap) if cap else steps


def _restore_finished(phase: str, model, ckpt: Checkpoints, result: Result) -> bool:
    """If an earlier, interrupted run finished this phase, load its weights and history and say so."""
    done = ckpt.done(phase)
    if done is None:
        return False
    model.load_weights(done)
    result.history += ckpt.history(phase)
    result.resumed_from = phase
    log.info("phase %s already finished: weights restored from %s", phase, done)
    return True


def _fit_phase(model, phase, epochs, lr, train_ds, val_ds, p: Train, n_train, n_val, batch, ckpt, result):
    """One Keras fit() for a phase, resumable through BackupAndRestore; skipped if already finished."""
    if _restore_finished(phase, model, ckpt, result) or epochs == 0:
        return
    start = len(result.history)
    steps = _steps(n_train, batch, p.max_steps_per_epoch)
    if result.strategy == "multi_worker":
        _fit_multi_worker(model, phase, epochs, lr, train_ds, val_ds if n_val else None, p, steps, batch, result)
    else:
        _compile(model, lr, p.label_smoothing)
        model.fit(train_ds, validation_data=val_ds if n_val else None, epochs=epochs, steps_per_epoch=steps,
                  verbose=2, callbacks=_callbacks(result, phase, min(n_train, steps * batch), p.patience,
                                                  ckpt.backup_dir(phase), n_val > 0))
    ckpt.finish(phase, model, result.history[start:])


def _fit_multi_worker(model, phase, epochs, lr, train_ds, val_ds, p: Train, steps, batch, result) -> None:
    """A plain strategy.run loop for MultiWorkerMirroredStrategy, where Keras 3.15's fit() fails.

    Keras all-reduces the first input batch and its scalar logs with axis=0 under MWMS; this loop
    reduces only losses and counts. Same loss, optimizer and per-epoch history as fit(); no early stopping.
    """
    import keras
    import tensorflow as tf

    strategy = model.distribute_strategy
    with strategy.scope():
        optimizer = keras.optimizers.Adam(lr)
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
            grads = tape.gradient(loss, model.trainable_variables)
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

    history = history_callback(result, phase, steps * batch)
    iterator = iter(strategy.experimental_distribute_dataset(train_ds))
    for epoch in range(epochs):
        history.on_epoch_begin(epoch)
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
        history.on_epoch_end(epoch, logs)


def _head_on_cached_features(model, data_dir, m: Model, p: Train, num_classes, batch, result, ckpt):
    """Frozen-backbone phase: compute backbone features once, train only the head on them."""
    import keras
    import tensorflow as tf

    phase = "head"
    if _restore_finished(phase, model, ckpt, result):
        return
    extractor = feature_extractor(model)
    t0 = time.perf_counter()
    feats = {}
    for split in ("train", "val"):
        ds = tfrecord.dataset(data_dir, split, m.image_size, batch)
        xs, ys = [], []
        for x, y in ds:
            xs.append(extractor(x, training=False).numpy())
            ys.append(y.numpy())
        feats[split] = (np.concatenate(xs), np.concatenate(ys)) if xs else None
    extract_secs = time.perf_counter() - t0
    fx, fy = feats["train"]
    head = keras.Sequential([keras.Input((fx.shape[1],)), keras.layers.Dropout(m.dropout),
                             keras.layers.Dense(num_classes, activation="softmax", dtype="float32")])
    _compile(head, p.learning_rate, p.label_smoothing)
    onehot = np.eye(num_classes, dtype=np.float32)
    train_ds = tf.data.Dataset.from_tensor_slices((fx, onehot[fy])).shuffle(len(fx), seed=p.seed).batch(batch)
    val = feats["val"]
    val_ds = tf.data.Dataset.from_tensor_slices((val[0], onehot[val[1]])).batch(batch) if val else None
    start = len(result.history)
    head.fit(train_ds, validation_data=val_ds, epochs=p.epochs, verbose=2,
             callbacks=_callbacks(result, phase, len(fx), p.patience, ckpt.backup_dir(phase), val is not None))
    result.history[start]["seconds"] += round(extract_secs, 3)
    result.train_seconds += extract_secs
    model.get_layer(OUTPUT_NAME).set_weights(head.layers[-1].get_weights())
    ckpt.finish(phase, model, result.history[start:])


def inference_copy(model):
    """The same architecture and weights without optimizer state, in float32, ready to save."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def fit(data_dir: Path, m: Model, p: Train, checkpoint_dir: Path):
    """Train a classifier on the TFRecords; return (model, Result). Resumes from checkpoint_dir if it matches."""
    import keras
    import tensorflow as tf

    strategy = make_strategy(p.strategy)  # first: collective ops must be configured before any other TF work
    keras.utils.set_random_seed(p.seed)
    if p.deterministic:
        tf.config.experimental.enable_op_determinism()
    manifest = tfrecord.Manifest.read(data_dir)
    num_classes = len(manifest.classes)
    n_train, n_val = manifest.count("train"), manifest.count("val")
    if n_train == 0:
        raise StageError(f"{data_dir}: the train split is empty")
    gpus = len(tf.config.list_physical_devices("GPU"))
    mixed = use_mixed_precision(p.mixed_precision, gpus)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    replicas = strategy.num_replicas_in_sync
    batch = p.batch_size * replicas
    kind = ("multi_worker" if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            else "mirrored" if isinstance(strategy, tf.distribute.MirroredStrategy) else "default")
    result = Result(replicas=replicas, strategy=kind, mixed_precision=mixed)
    ckpt = Checkpoints(checkpoint_dir, fingerprint(m, p, data_dir / tfrecord.MANIFEST))
    pretrained = resolve_weights(m.weights) is not None
    with strategy.scope():
        model = build_model(m.arch, m.image_size, num_classes, m.weights, m.dropout,
                            bn_momentum=None if pretrained else p.scratch_bn_momentum)
    if pretrained:
        backbone = backbone_of(model)
        backbone.trainable = False
        if p.cache_features and p.epochs and replicas == 1:
            _head_on_cached_features(model, data_dir, m, p, num_classes, batch, result, ckpt)
        else:
            train_ds, val_ds = _datasets(data_dir, m.image_size, batch, p, p.augment, num_classes, replicas, n_val)
            with strategy.scope():
                _fit_phase(model, "head", p.epochs, p.learning_rate, train_ds, val_ds, p, n_train, n_val, batch,
                           ckpt, result)
        if p.fine_tune_epochs:
            backbone.trainable = True
            cut = max(0, len(backbone.layers) - p.fine_tune_layers) if p.fine_tune_layers else 0
            for layer in backbone.layers[:cut]:
                layer.trainable = False
            for layer in backbone.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
            train_ds, val_ds = _datasets(data_dir, m.image_size, batch, p, p.augment, num_classes, replicas, n_val)
            with strategy.scope():
                _fit_phase(model, "fine_tune", p.fine_tune_epochs, p.fine_tune_learning_rate, train_ds, val_ds, p,
                           n_train, n_val, batch, ckpt, result)
    else:
        train_ds, val_ds = _datasets(data_dir, m.image_size, batch, p, p.augment, num_classes, replicas, n_val)
        with strategy.scope():
            _fit_phase(model, "scratch", p.scratch_epochs, p.scratch_learning_rate, train_ds, val_ds, p, n_train,
                       n_val, batch, ckpt, result)
    result.epochs_run = len(result.history)
    vals = [h["val_accuracy"] for h in result.history if "val_accuracy" in h]
    result.best_val_accuracy = max(vals) if vals else 0.0
    return model, result, ckpt
