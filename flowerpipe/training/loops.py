"""The training loops: Keras fit() per phase (resumable), a strategy.run loop for multi-worker, the cached head."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowerpipe.data import tfrecord
from flowerpipe.model import OUTPUT_NAME, feature_extractor
from flowerpipe.params import Model, Train
from flowerpipe.training.checkpoints import Checkpoints
from flowerpipe.training.epochs import EpochLog, Result
from flowerpipe.training.schedule import EpochBudget, budget_for, fit_to_budget, learning_rate_for
from flowerpipe.training.throughput import training_flops

log = logging.getLogger(__name__)


def augmenter(seed: int, strength: float = 1.0):
    """Augmentation for flowers: flips; rotations, zoom and contrast scaled by strength (1: light)."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.08 * strength, seed=seed),
        keras.layers.RandomZoom(0.15 * strength, seed=seed),
        keras.layers.RandomContrast(0.15 * strength, seed=seed),
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
        aug = augmenter(train.seed, train.augment_strength)
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


def optimizer_for(learning_rate, weight_decay: float = 0.0):
    """Adam (AdamW with decoupled weight decay, not on biases or BatchNorm), wrapped in loss scaling under
    mixed_float16 (what compile() adds; a custom loop must add it itself). learning_rate may be a schedule."""
    import keras

    if weight_decay:
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    else:
        optimizer = keras.optimizers.Adam(learning_rate)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _compile(model, learning_rate, label_smoothing: float, weight_decay: float = 0.0) -> None:
    import keras

    model.compile(optimizer=optimizer_for(learning_rate, weight_decay),
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
    features_dir: Path | None = None  # the features stage's output, reused when it matches this backbone and data

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


def steps_per_epoch(n: int, batch: int, cap: int) -> int:
    """Batches per epoch: the whole split (the last batch may be partial), or at most cap when cap is set."""
    steps = max(1, -(-n // batch))
    return min(steps, cap) if cap else steps


def fit_phase(run: Run, model, phase: str, epochs: int, lr: float) -> None:
    """One Keras fit() for a phase, resumable through BackupAndRestore; skipped if already finished.

    From scratch with train.scratch_minutes, epochs is a cap: the phase stops when its time budget is spent.
    """
    start = len(run.result.history)
    steps = steps_per_epoch(run.n_train, run.batch, run.p.max_steps_per_epoch)
    lr = learning_rate_for(run.p, phase, lr, epochs, steps)
    budget = budget_for(run.p, phase, epochs)
    trained = [row.get("seconds", 0.0) for row in run.ckpt.history(phase)]
    if budget is not None and trained and run.result.strategy != "multi_worker":  # (the multi-worker loop starts over)
        fit_to_budget(budget, trained, lr, steps)  # epochs an interrupted run trained count against the budget
        run.result.budget_epochs = budget.epochs
    if run.resume(phase, model) or epochs == 0:
        return
    train_ds, val_ds = run.datasets()
    run.log.step_flops = training_flops(model)["train_step"]
    decay = run.p.scratch_weight_decay if phase == "scratch" else 0.0
    with run.strategy.scope():
        if run.result.strategy == "multi_worker":
            _fit_multi_worker(run, model, phase, epochs, lr, decay, train_ds, val_ds if run.n_val else None, steps,
                              budget)
        else:
            _compile(model, lr, run.p.label_smoothing, decay)
            callbacks = run.callbacks(phase, min(run.n_train, steps * run.batch), run.n_val > 0)
            if budget is not None:
                callbacks.append(_budget_callback(budget, lr, steps, run.result.history))
            model.fit(train_ds, validation_data=val_ds if run.n_val else None, epochs=epochs, steps_per_epoch=steps,
                      verbose=2, callbacks=callbacks)
    if budget is not None:
        run.result.budget_epochs = budget.epochs
    run.ckpt.finish(phase, model, run.result.history[start:])


def _budget_callback(budget: EpochBudget, schedule, steps: int, history: list[dict]):
    """A Keras callback that refits the epoch count after each epoch and stops fit() when the budget is spent.

    It reads the epoch's time from the row the epoch log (an earlier callback) has just added to history.
    """
    import keras

    class _Budget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            """Refit the epoch count; stop once it is reached."""
            if fit_to_budget(budget, [history[-1]["seconds"]], schedule, steps):
                self.model.stop_training = True

    return _Budget()


def _fit_multi_worker(run: Run, model, phase, epochs, lr, decay, train_ds, val_ds, steps,
                      budget: EpochBudget | None) -> None:
    """A plain strategy.run loop for MultiWorkerMirroredStrategy, where Keras 3.15's fit() fails.

    Keras all-reduces the first input batch and its scalar logs with axis=0 under MWMS; this loop
    reduces only losses and counts. Same loss, optimizer and per-epoch log as fit(); no early stopping.
    A time budget uses the workers' mean epoch time, so that every worker stops after the same epoch.
    """
    import keras
    import tensorflow as tf

    strategy, batch, p = run.strategy, run.batch, run.p
    optimizer = optimizer_for(lr, decay)
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
        seconds = time.perf_counter() - t
        run.log.epoch(phase, logs, steps * batch, seconds)
        if budget is not None:
            seconds = strategy.reduce("MEAN", strategy.run(lambda s=seconds: tf.constant(s)), axis=None)
            if fit_to_budget(budget, [float(seconds)], lr, steps):
                break


def head_on_cached_features(run: Run, model) -> None:
    """Frozen-backbone phase on backbone features: the features stage's when they match, else extracted here."""
    import keras
    import tensorflow as tf

    from flowerpipe.training import features

    phase, p, m, batch = "head", run.p, run.m, run.batch
    start = len(run.result.history)
    if run.resume(phase, model):
        return
    extractor = feature_extractor(model)
    feats = features.load(run.features_dir, features.key(m, run.data_dir)) if run.features_dir else None
    run.result.features = "reused" if feats is not None else "extracted"
    if feats is None:
        feats, extract_secs = features.extract(extractor, run.data_dir, m.image_size)
        run.result.train_seconds += extract_secs  # the one full forward pass counts as training time
        run.result.flops += training_flops(extractor)["forward"] * sum(len(y) for _, y in feats.values())
    log.info("head phase on %s backbone features", run.result.features)
    fx, fy = feats["train"]
    head = keras.Sequential([keras.Input((fx.shape[1],)), keras.layers.Dropout(m.dropout),
                             keras.layers.Dense(run.num_classes, activation="softmax", dtype="float32")])
    _compile(head, p.learning_rate, p.label_smoothing)
    onehot = np.eye(run.num_classes, dtype=np.float32)
    train_ds = tf.data.Dataset.from_tensor_slices((fx, onehot[fy])).shuffle(len(fx), seed=p.seed).batch(batch)
    val = feats.get("val")
    val_ds = tf.data.Dataset.from_tensor_slices((val[0], onehot[val[1]])).batch(batch) if val else None
    run.log.step_flops = training_flops(head)["train_step"]
    head.fit(train_ds, validation_data=val_ds, epochs=p.epochs, verbose=2,
             callbacks=run.callbacks(phase, len(fx), val is not None))
    model.get_layer(OUTPUT_NAME).set_weights(head.layers[-1].get_weights())
    run.ckpt.finish(phase, model, run.result.history[start:])
