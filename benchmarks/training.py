"""Print training images/s: float32 and bfloat16 on in-memory batches, the train stage's own input against them
(same network, same policy, same machine), each as a share of the measured matmul peak; then the frozen-phase
speed-up of cached backbone features.

Random weights (speed does not depend on them). The cases run in interleaved rounds and the median is printed,
because this machine's speed drifts between runs. bfloat16 runs where the CPU has it (or with --bf16, emulated).
With --records, the stage's input (its split decoded once into the uint8 cache, then augmented per batch: the
from-scratch crops and the fine-tuning zoom) is timed under the policy the stage would use here, and its rate is
printed as a share of the in-memory rate (issue 37's target: at least 95%).
Usage: python benchmarks/training.py [--size 128] [--batch 32] [--width 1.0] [--middle-blocks 8]
                                     [--records data/tfrecords] [--rounds 3] [--steps 6] [--bf16]
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from flowerpipe.errors import run_script
from flowerpipe.quiet import quiet_tensorflow


def images_per_second(model, data, batch: int, steps: int) -> float:
    """Steady-state training throughput inside one model.fit, as the stage runs (one input iterator per phase): from
    the end of its first step to the end of step steps + 1, so the iterator's start-up is left out for every input
    alike."""
    import keras

    ends: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            """When this step ended."""
            ends.append(time.perf_counter())

    model.fit(data, steps_per_epoch=steps + 1, epochs=1, verbose=0, callbacks=[Clock()])
    return steps * batch / (ends[-1] - ends[0])


def input_rate(data, batch: int, batches: int) -> tuple[float, float]:
    """Images/s the input pipeline alone delivers (after one warm-up batch), and its CPU time per image in ms (all
    threads; unlike wall time, barely moved by other processes sharing the cores)."""
    it = iter(data)
    next(it)
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t), (time.process_time() - cpu) * 1e3 / (batches * batch)


def build(args, policy: str):
    """A compiled model under a dtype policy (the policy must be set before the layers are built)."""
    import keras

    from flowerpipe.model.build import build_model
    from flowerpipe.params import Model
    from flowerpipe.training.loops import optimizer_for

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model = build_model(Model(image_size=args.size, weights="none", width=args.width,
                              middle_blocks=args.middle_blocks), 5)
    model.compile(optimizer=optimizer_for(1e-4), loss="categorical_crossentropy")
    keras.mixed_precision.set_global_policy("float32")
    return model


def main() -> None:
    """Whole-network training per precision and input; then one frozen-backbone epoch with and without caching."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--middle-blocks", type=int, default=8)
    ap.add_argument("--records", type=Path, help="TFRecords folder: also time the train stage's own input pipeline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--bf16", action="store_true", help="time bfloat16 even where the CPU would emulate it")
    args = ap.parse_args()
    quiet_tensorflow()
    import tensorflow as tf

    from flowerpipe.measure import peaks as peak_lib
    from flowerpipe.measure.cpu import bf16_missing
    from flowerpipe.params import Train
    from flowerpipe.training.loops import _datasets
    from flowerpipe.training.throughput import training_flops

    size, batch, rng = args.size, args.batch, np.random.default_rng(0)
    x = rng.uniform(0, 255, (4 * batch, size, size, 3)).astype(np.float32)
    y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, len(x))]
    memory = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).repeat().prefetch(2)
    cases = {"float32, in-memory batches": (build(args, "float32"), memory, "float32")}
    reason = bf16_missing()
    if not reason or args.bf16:
        label = "mixed_bfloat16, in-memory batches" + (" (emulated: no bf16 here)" if reason else "")
        cases[label] = (build(args, "mixed_bfloat16"), memory, "bfloat16")
    else:
        print(f"mixed_bfloat16: not timed: {reason} (--bf16 times it emulated)")
    stage_policy = "mixed_bfloat16" if "bfloat16" in {c[2] for c in cases.values()} else "float32"
    in_memory = next(name for name, c in cases.items() if c[2] == ("bfloat16" if stage_policy != "float32"
                                                                   else "float32"))
    stage_cases = {}
    if args.records:
        train = Train()
        for phase, scratch in (("from scratch: crops", True), ("fine-tuning: zoom", False)):
            t = time.perf_counter()
            data, _ = _datasets(args.records, size, batch, train, True, 5, scratch=scratch)
            cache = time.perf_counter() - t
            alone, cpu_ms = input_rate(data, batch, 4 * args.steps)
            name = f"{stage_policy}, train stage's input ({phase})"
            cases[name] = (build(args, stage_policy), data, cases[in_memory][2])
            stage_cases[name] = (cache, alone, cpu_ms)
    flops = training_flops(next(iter(cases.values()))[0])["train_step"]
    measured = peak_lib.measure("cpu", peak_lib.needed(("cpu", c[2]) for c in cases.values())["cpu"])
    peaks = {dtype: peak_lib.peak_for(measured, "cpu", dtype)[0] for dtype in {c[2] for c in cases.values()}}
    for model, data, _ in cases.values():
        model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)  # trace, compile, fill the input pipeline
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (model, data, _) in cases.items():
            rates[name].append(images_per_second(model, data, batch, args.steps))
    print(f"Xception {size}x{size} width {args.width:g}, {args.middle_blocks} middle blocks, batch {batch}: "
          f"{flops / 1e9:.2f} GFLOP per training image; matmul peak "
          + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in peaks.items()))
    for name, (_, _, dtype) in cases.items():
        ips, rounds = statistics.median(rates[name]), ", ".join(f"{r:.2f}" for r in rates[name])
        print(f"  {name:62s} {ips:7.2f} images/s  {ips * flops / 1e9:6.1f} GFLOP/s = "
              f"{ips * flops / 1e9 / peaks[dtype]:4.0%} of peak  (rounds: {rounds})")
    reference = statistics.median(rates[in_memory])
    for name, (cache, alone, cpu_ms) in stage_cases.items():
        print(f"  {name}: {statistics.median(rates[name]) / reference:.1%} of the in-memory rate ({in_memory}; "
              f"target >= 95%); its input alone {alone:.0f} images/s, {cpu_ms:.1f} CPU ms per image (a training "
              f"step: {2e3 / reference:.0f} core-ms per image on 2 cores); split decoded once in {cache:.1f} s")
    frozen_phase(args, rng)


def frozen_phase(args, rng) -> None:
    """Six frozen-backbone epochs: full forward passes every epoch, features extracted once, features reused."""
    import keras

    from flowerpipe.model.build import backbone_of, feature_extractor

    size, batch, n, epochs = args.size, args.batch, 8 * args.batch, 6
    x = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, n)]
    model = build(args, "float32")
    backbone_of(model).trainable = False
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(x[:batch], y[:batch], batch_size=batch, verbose=0)
    t = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    full = n / (time.perf_counter() - t)
    t = time.perf_counter()
    feats = feature_extractor(model).predict(x, batch_size=batch, verbose=0)
    extract = time.perf_counter() - t
    head = keras.Sequential([keras.Input((feats.shape[1],)), keras.layers.Dropout(0.2),
                             keras.layers.Dense(5, activation="softmax")])
    head.compile(optimizer="adam", loss="categorical_crossentropy")
    head.fit(feats[:batch], y[:batch], batch_size=batch, verbose=0)
    t = time.perf_counter()
    head.fit(feats, y, batch_size=batch, epochs=epochs, verbose=0)
    head_secs = time.perf_counter() - t
    full_secs, cached_secs = epochs * n / full, extract + head_secs
    print(f"frozen backbone at {size}: full forward passes {full:.1f} images/s; features extracted once at "
          f"{n / extract:.1f} images/s, then {epochs * n / head_secs:.0f} images/s on the head")
    print(f"  {epochs} epochs of {n} images: {full_secs:.1f} s full vs {cached_secs:.1f} s cached = "
          f"{full_secs / cached_secs:.1f}x faster; an experiment that reuses the features stage's output: "
          f"{head_secs:.2f} s = {full_secs / head_secs:.0f}x faster")


if __name__ == "__main__":
    run_script(main)
