"""The training loops: Keras fit() per phase (resumable), a strategy.run loop for multi-worker, the cached head."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowerpipe.data import tfrecord
from flowerpipe.model.backbones import BACKBONES
from flowerpipe.model.build import OUTPUT_NAME, batch_norm_layers, feature_extractor
from flowerpipe.params import Model, Train
from flowerpipe.training.checkpoints import Checkpoints
from flowerpipe.training.epochs import EpochLog, Result
from flowerpipe.training.input import Augment, Cache, build_cache, cache_side, train_dataset
from flowerpipe.training.schedule import (
    EpochBudget,
    TimeBudget,
    budget_for,
    fit_to_budget,
    learning_rate_for,
    time_budget_for,
)
from flowerpipe.training.throughput import training_flops

log = logging.getLogger(__name__)


def mixer(seed: int, mixup: float, cutmix: float):
    """Keras's MixUp (alpha `mixup`) or CutMix (alpha `cutmix`) on (images, one-hot labels) batches: one of the
    two at random per batch when both are on."""
    import keras

    mixes = []
    if mixup:
        mixes.append(keras.layers.MixUp(alpha=mixup, seed=seed))
    if cutmix:
        mixes.append(keras.layers.CutMix(factor=cutmix, seed=seed + 1))
    coin = keras.random.SeedGenerator(seed + 2)

    def mix(x, y):
        import tensorflow as tf

        def apply(layer):
            out = layer({"images": x, "labels": y}, training=True)
            return out["images"], out["labels"]

        if len(mixes) == 1:
            return apply(mixes[0])
        return tf.cond(keras.random.uniform((), seed=coin) < 0.5, lambda: apply(mixes[0]), lambda: apply(mixes[1]))

    return mix


def augmentation(train: Train, image_size: int, augment: bool, scratch: bool) -> Augment:
    """What the train.* params ask of each training image in a phase: from scratch, random resized crops (the
    scratch_* params) replace the zoom; flips, rotations and contrast whenever train.augment is on."""
    crop = train.scratch_crop_area if scratch and augment else 1.0
    return Augment(image_size, crop_area=crop, max_upsample=train.scratch_crop_max_upsample,
                   strength=train.augment_strength, zoom=augment and crop == 1.0, flip=augment)


def _datasets(data_dir: Path, image_size: int, global_batch: int, train: Train, augment: bool, num_classes: int,
              replicas: int = 1, n_val: int = 0, scratch: bool = False, cache: Cache | None = None,
              train_size: int | None = None):
    """Train and val datasets with one-hot labels (for label smoothing), sharded by data for multi-worker.

    The train split is decoded once into an in-memory cache (flowerpipe.training.input; pass `cache` to reuse one
    built at the same side) and augmented a batch at a time. From scratch, augmentation adds the scratch_*
    regularizers: random resized crops, RandAugment, MixUp/CutMix. With several replicas every batch must split
    evenly (keras-team/keras#19246), so the last partial validation batch is dropped there.
    """
    import keras
    import tensorflow as tf

    def onehot(x, y):
        return x, tf.one_hot(y, num_classes)

    aug = augmentation(train, train_size or image_size, augment, scratch)  # train_size: progressive's first half
    side = cache_side(aug.image_size, aug.crop_area)
    if cache is None or cache.images.shape[1] != side:
        cache = build_cache(data_dir, "train", side)
    train_ds = train_dataset(cache, aug, global_batch, train.seed)
    if augment and scratch and train.scratch_randaugment:
        rand = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=train.scratch_randaugment,
                                        seed=train.seed)
        train_ds = train_ds.map(lambda x, y: (rand(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    train_ds = train_ds.map(onehot)
    if augment and scratch and (train.scratch_mixup or train.scratch_cutmix):
        train_ds = train_ds.map(mixer(train.seed, train.scratch_mixup, train.scratch_cutmix),
                                num_parallel_calls=tf.data.AUTOTUNE)
    if replicas > 1:
        val_batch = min(global_batch, (n_val // replicas) * replicas) or replicas
        val_ds = tfrecord.dataset(data_dir, "val", image_size, val_batch, drop_remainder=True)
    else:
        val_ds = tfrecord.dataset(data_dir, "val", image_size, global_batch)
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return (train_ds.prefetch(tf.data.AUTOTUNE).with_options(opts),
            val_ds.cache().map(onehot).with_options(opts))  # val decoded once too, in its first epoch


def optimizer_for(learning_rate, weight_decay: float = 0.0, ema: float = 0.0):
    """Adam (AdamW with decoupled weight decay, not on biases or BatchNorm), wrapped in loss scaling under
    mixed_float16 (what compile() adds; a custom loop must add it itself). learning_rate may be a schedule.
    ema > 0: Keras keeps an exponential moving average of the weights (that momentum), which fit() ends with."""
    import keras

    averaging = {"use_ema": True, "ema_momentum": ema} if ema else {}
    if weight_decay:
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **averaging)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    else:
        optimizer = keras.optimizers.Adam(learning_rate, **averaging)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _compile(model, learning_rate, label_smoothing: float, weight_decay: float = 0.0, ema: float = 0.0) -> None:
    import keras

    model.compile(optimizer=optimizer_for(learning_rate, weight_decay, ema),
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

    def datasets(self, phase: str, train_size: int | None = None):
        """Train and val datasets for a fit() phase (augmented when train.augment is on); training images of
        train_size (progressive resizing's first half), validation at the model's size."""
        return _datasets(self.data_dir, self.m.image_size, self.batch, self.p, self.p.augment, self.num_classes,
                         self.result.replicas, self.n_val, scratch=phase == "scratch", train_size=train_size)

    def callbacks(self, phase: str, images_per_epoch: int, has_val: bool, keep_backup: bool = False) -> list:
        """The epoch log first (so an epoch is recorded before its backup), then resume and early stopping;
        keep_backup: a fit() the phase continues in another (progressive resizing) keeps its last epoch's backup."""
        import keras

        cbs = [self.log.callback(phase, images_per_epoch),
               keras.callbacks.BackupAndRestore(str(self.ckpt.backup_dir(phase)), delete_checkpoint=not keep_backup)]
        patience = self.p.scratch_patience if phase == "scratch" else self.p.patience
        if patience and has_val:
            cbs.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=patience,
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
    """One Keras fit() for a phase (two with progressive resizing: small images, then the training size),
    resumable through BackupAndRestore; skipped if already finished.

    From scratch with train.scratch_minutes, epochs is a cap: the phase's learning rate follows its clock and
    the phase stops when its time budget is spent (multi-worker: the epoch count is refitted to the budget).
    """
    started = time.perf_counter()
    start = len(run.result.history)
    steps = steps_per_epoch(run.n_train, run.batch, run.p.max_steps_per_epoch)
    trained = [row.get("seconds", 0.0) for row in run.ckpt.history(phase)]
    multi_worker = run.result.strategy == "multi_worker"
    clock = None if multi_worker else time_budget_for(run.p, phase, lr, epochs, steps)
    budget = budget_for(run.p, phase, epochs) if multi_worker else None
    if clock is None:
        lr = learning_rate_for(run.p, phase, lr, epochs, steps)
    if run.resume(phase, model) or epochs == 0:
        if clock is not None:
            run.result.budget_epochs = len(run.ckpt.history(phase))
        return
    small = progressive_side(run.m, run.p, phase, multi_worker)
    train_ds, val_ds = run.datasets(phase)
    flops = {size: training_flops(model, size)["train_step"] for size in {run.m.image_size, small} - {None}}
    decay = run.p.scratch_weight_decay if phase == "scratch" else 0.0
    ema = run.p.scratch_ema if phase == "scratch" else 0.0
    val = val_ds if run.n_val else None
    with run.strategy.scope():
        if multi_worker:
            run.log.step_flops = flops[run.m.image_size]
            _fit_multi_worker(run, model, phase, epochs, lr, decay, train_ds, val, steps, budget)
        else:
            _compile(model, lr, run.p.label_smoothing, decay, ema)
            images, t0 = min(run.n_train, steps * run.batch), started - sum(trained)  # resumed: time counts
            done = 0
            if small is not None:  # the first half at the small side: half the epochs, or half the clock first
                run.log.step_flops = flops[small]
                small_ds, _ = run.datasets(phase, train_size=small)
                callbacks = run.callbacks(phase, images, run.n_val > 0, keep_backup=True)
                if clock is not None:
                    callbacks.append(_clock_callback(clock, t0, epochs, steps, until=clock.seconds / 2))
                model.fit(small_ds, validation_data=val, epochs=max(1, epochs // 2), steps_per_epoch=steps,
                          verbose=2, callbacks=callbacks)  # half the epochs, or half the clock if that comes first
                done = len(run.result.history) - start
                log.info("train.scratch_progressive=%g: %d epochs at %d px, then %d px", run.p.scratch_progressive,
                         done, small, run.m.image_size)
            run.log.step_flops = flops[run.m.image_size]
            callbacks = run.callbacks(phase, images, run.n_val > 0)
            if clock is not None:
                callbacks.append(_clock_callback(clock, t0, epochs, steps))
            if small is None or clock is None or not clock.spent(time.perf_counter() - t0):  # budget left
                model.fit(train_ds, validation_data=val, initial_epoch=done, epochs=epochs, steps_per_epoch=steps,
                          verbose=2, callbacks=callbacks)
            if ema:
                refresh_batch_norm(model, train_ds, steps)
    if budget is not None:
        run.result.budget_epochs = budget.epochs
    if clock is not None:
        run.result.budget_epochs = len(run.result.history) - start
    run.ckpt.finish(phase, model, run.result.history[start:])


def refresh_batch_norm(model, train_ds, steps: int) -> None:
    """BatchNorm statistics for the averaged (EMA) weights fit() ends with: the moving statistics were gathered
    under the live weights; one pass of training batches, in training mode, without any weight update."""
    if not batch_norm_layers(model):
        return
    for x, _ in train_ds.take(steps):  # an epoch: with scratch_bn_momentum 0.9 the old statistics fade out
        model(x, training=True)
    log.info("EMA weights: BatchNorm statistics recomputed over %d training batches", steps)


def progressive_side(m: Model, p: Train, phase: str, multi_worker: bool = False) -> int | None:
    """train.scratch_progressive's side for the first half of the scratch phase (a multiple of 8, at least the
    backbone's smallest input), or None: off, another phase, or multi-worker training (one warning line)."""
    if phase != "scratch" or p.scratch_progressive >= 1:
        return None
    side = max(round(m.image_size * p.scratch_progressive / 8) * 8, -(-BACKBONES[m.arch].min_size // 8) * 8)
    if side >= m.image_size:
        return None
    if multi_worker:
        log.warning("train.scratch_progressive=%g: not with multi-worker training; every batch at %d px",
                    p.scratch_progressive, m.image_size)
        return None
    return side


def _clock_callback(clock: TimeBudget, t0: float, epochs: int, steps: int, until: float | None = None):
    """A Keras callback that sets each step's learning rate from the phase's clock and stops fit() in time; until:
    also stop at the first epoch end past this many seconds (progressive resizing's first fit())."""
    import keras

    class _Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            """Start counting steps where a resumed optimizer left off (a run resumed past `until`: stop at once)."""
            self.step, self.stopped = int(self.model.optimizer.iterations.numpy()), False
            self.late = until is not None and time.perf_counter() - t0 >= until

        def on_train_batch_begin(self, batch, logs=None):
            """This step's learning rate."""
            self._began = time.perf_counter()
            self.model.optimizer.learning_rate.assign(clock.rate(self.step, self._began - t0))

        def on_train_batch_end(self, batch, logs=None):
            """Stop when another step and one validation would no longer fit the budget."""
            self.step += 1
            now = time.perf_counter()
            if self.late:  # Keras runs one step before it looks at stop_training
                self.model.stop_training = self.stopped = True
                return
            if clock.spent(now - t0, now - self._began) and not self.model.stop_training:
                self.model.stop_training = self.stopped = True
                log.info("train.scratch_minutes=%g: budget spent at %.1f min, after step %d of epoch %d; "
                         "one validation, then the phase ends", clock.seconds / 60, (time.perf_counter() - t0) / 60,
                         batch + 1, self.step // steps + (batch + 1 < steps))

        def on_test_begin(self, logs=None):
            self._val = time.perf_counter()

        def on_test_end(self, logs=None):
            """Keep the validation's time free at the end of the budget."""
            clock.reserve = time.perf_counter() - self._val

        def on_epoch_end(self, epoch, logs=None):
            """One line per epoch: where the clock and the learning rate are."""
            elapsed = time.perf_counter() - t0
            log.info("train.scratch_minutes=%g: epoch %d ended at %.1f min (its validation %.1f s), "
                     "learning rate %.2e", clock.seconds / 60, epoch + 1, elapsed / 60, clock.reserve,
                     clock.rate(self.step, elapsed))
            if until is not None and elapsed >= until and not self.model.stop_training:
                self.model.stop_training = self.stopped = True

        def on_train_end(self, logs=None):
            """Say why the phase ended before its budget, if it did."""
            elapsed = time.perf_counter() - t0
            if not self.stopped and clock.seconds - elapsed > 60:
                log.warning("train.scratch_minutes=%g: the phase ended at %.1f min, %.1f min early: %s",
                            clock.seconds / 60, elapsed / 60, (clock.seconds - elapsed) / 60,
                            f"train.scratch_epochs={epochs} reached (raise it to spend the budget)"
                            if self.step >= epochs * steps else "early stopping (train.scratch_patience)")

    return _Clock()


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
