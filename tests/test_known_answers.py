"""Every number flowerpipe reports or decides on, from small hand-made inputs whose right answer is written here.

Each expected value below was worked out by hand (the working is in the comments), never read back from the code;
property-based tests (hypothesis) state the rules an example cannot: agreement with oneself is 1, with a
permutation of the classes 0; percentiles are ordered; a split is disjoint, covering and stratified.
These are the tests `make mutation` runs against mutants of the modules they pin (docs/testing.md).
"""

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import FakeLive
from hypothesis import given, settings
from hypothesis import strategies as st

from flowerpipe.data.split import SPLITS, _count, stratified_split
from flowerpipe.decide.recommend import Floors, _choice, _spread, decide, floor_reason, headline, render
from flowerpipe.measure.harness import merge_rounds, summarize
from flowerpipe.measure.scores import agreement, predict_batches, score
from flowerpipe.training.epochs import EpochLog, Result
from flowerpipe.training.throughput import layer_flops, training_flops

# The same examples every run (a failure is reproducible, never a one-off), and no .hypothesis/ folder written.
settings.register_profile("known_answers", derandomize=True, database=None)
settings.load_profile("known_answers")

# ---------------------------------------------------------------- evaluate: agreement

REFERENCE = np.array([[0.7, 0.2, 0.1],   # argmax 0
                      [0.1, 0.8, 0.1],   # argmax 1
                      [0.2, 0.2, 0.6],   # argmax 2
                      [0.5, 0.3, 0.2]])  # argmax 0
CONVERTED = np.array([[0.6, 0.3, 0.1],   # 0: agrees; |diff| 0.1, 0.1, 0
                      [0.1, 0.78, 0.1],  # 1: agrees; sums to 0.98, the worst row sum (error 0.02)
                      [0.2, 0.2, 0.6],   # 2: agrees; identical
                      [0.3, 0.6, 0.1]])  # 1: disagrees; |diff| 0.2, 0.3, 0.1 -> the largest difference, 0.3


def test_agreement_is_the_share_of_rows_whose_top_class_matches():
    """3 of 4 rows agree: 0.75 (not 1 because one row agrees, not 3 because three do)."""
    a = agreement(CONVERTED, REFERENCE)
    assert a == {"top1_agreement": 0.75, "max_prob_diff": 0.3, "max_sum_error": 0.02}
    assert agreement(CONVERTED[3:], REFERENCE[3:])["top1_agreement"] == 0.0  # the one disagreeing row alone
    assert agreement(CONVERTED[:1], REFERENCE[:1])["top1_agreement"] == 1.0


def test_agreement_of_nothing_is_perfect_and_a_sum_error_is_either_sign():
    empty = np.zeros((0, 3))
    assert agreement(empty, empty) == {"top1_agreement": 1.0, "max_prob_diff": 0.0, "max_sum_error": 0.0}
    over = np.array([[0.5, 0.3, 0.25]])  # sums to 1.05: error 0.05, not -0.05
    assert agreement(over, over) == {"top1_agreement": 1.0, "max_prob_diff": 0.0, "max_sum_error": 0.05}
    # rounded to 4 and 6 places: 2 of 3 is 0.6667; a difference of 1/3 is 0.333333
    three = np.array([[1.0, 0.0], [0.0, 1.0], [1 / 3, 2 / 3]])
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [2 / 3, 1 / 3]])
    assert agreement(three, ref)["top1_agreement"] == 0.6667 and agreement(three, ref)["max_prob_diff"] == 0.333333


def distinct_rows(max_classes=6, max_rows=12):
    """Probability rows with one top class each (distinct values), as (rows, classes) arrays."""
    return st.integers(2, max_classes).flatmap(lambda k: st.lists(
        st.permutations(range(k)), min_size=1, max_size=max_rows).map(
        lambda rows: np.array([[(v + 1) / (k * (k + 1) / 2) for v in r] for r in rows])))


@settings(max_examples=60, deadline=None)
@given(distinct_rows(), st.data())
def test_agreement_with_oneself_is_1_and_with_a_shift_of_the_classes_0(probs, data):
    assert agreement(probs, probs)["top1_agreement"] == 1.0
    assert agreement(probs, probs)["max_prob_diff"] == 0.0
    k = probs.shape[1]
    shift = data.draw(st.integers(1, k - 1))  # a permutation of the classes that moves every class
    moved = np.roll(probs, shift, axis=1)
    assert agreement(moved, probs)["top1_agreement"] == 0.0


@settings(max_examples=40, deadline=None)
@given(distinct_rows(), st.data())
def test_agreement_counts_the_rows_changed(probs, data):
    """Move the top class of exactly m of n rows: agreement is (n - m) / n, to 4 places."""
    n = len(probs)
    changed = data.draw(st.sets(st.integers(0, n - 1)))
    other = probs.copy()
    for i in changed:
        other[i] = np.roll(other[i], 1)
    assert agreement(other, probs)["top1_agreement"] == round((n - len(changed)) / n, 4)


# ---------------------------------------------------------------- evaluate: accuracy and F1

def one_hot(pred, k):
    return np.eye(k)[pred]


def test_f1_per_class_and_macro_by_hand():
    """labels 0 0 0 1 1 2, predicted 0 0 1 1 2 2.

    class 0: TP 2, FP 0, FN 1 -> precision 1, recall 2/3, F1 2*1*(2/3)/(1+2/3) = 0.8
    class 1: TP 1, FP 1, FN 1 -> precision 1/2, recall 1/2, F1 0.5
    class 2: TP 1, FP 1, FN 0 -> precision 1/2, recall 1, F1 2/3
    macro F1 = (0.8 + 0.5 + 0.6667) / 3 = 0.6556 (the mean, not the best class's 0.8); accuracy 4/6 = 0.6667
    """
    labels, pred = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2])
    s = score(one_hot(pred, 3), labels, ["a", "b", "c"])
    assert s["accuracy"] == 0.6667
    assert s["macro_f1"] == 0.6556
    assert s["per_class"] == {"a": {"precision": 1.0, "recall": 0.6667, "f1": 0.8, "support": 3},
                              "b": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
                              "c": {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}}


def test_a_class_never_seen_nor_predicted_counts_as_0_in_the_macro_mean():
    """The same six rows with a fourth class absent from both: its F1 is 0, and the mean is over 4 classes:
    (0.8 + 0.5 + 2/3 + 0) / 4 = 0.4917."""
    labels, pred = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2])
    s = score(one_hot(pred, 4), labels, ["a", "b", "c", "d"])
    assert s["macro_f1"] == 0.4917 and s["accuracy"] == 0.6667
    assert s["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_the_predicted_class_is_the_largest_probability():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.4, 0.1]])  # predicted 1, 0
    assert score(probs, np.array([1, 0]), ["a", "b", "c"])["accuracy"] == 1.0
    assert score(probs, np.array([0, 1]), ["a", "b", "c"])["accuracy"] == 0.0


def test_predict_batches_runs_fixed_size_batches_in_order():
    sizes = []

    class Runner:
        def predict(self, x):
            sizes.append(len(x))
            return x[:, :2] * 2

    images = np.arange(10, dtype=np.float32).reshape(5, 2)
    out = predict_batches(Runner(), images, 2)
    assert sizes == [2, 2, 1] and np.array_equal(out, images * 2)
    assert predict_batches(Runner(), images[:0], 2).shape == (0, 0)


# ---------------------------------------------------------------- benchmark statistics

def test_latency_percentiles_and_throughput_of_a_known_list():
    """Calls of 10, 20, 30, 40 and 100 ms at batch 2: median 30, mean 40; numpy's linear percentiles over the
    sorted list: p90 at index 0.9 x 4 = 3.6 -> 40 + 0.6 x 60 = 76, p99 at 3.96 -> 40 + 0.96 x 60 = 97.6;
    throughput 2 images x 5 calls / 0.2 s = 50 images/s."""
    s = summarize([0.030, 0.010, 0.100, 0.020, 0.040], batch=2)
    assert s == {"iterations": 5, "latency_ms_median": 30.0, "latency_ms_mean": 40.0, "latency_ms_p90": 76.0,
                 "latency_ms_p99": 97.6, "throughput_ips": 50.0}


def test_the_median_of_an_even_count_is_the_mean_of_the_middle_two():
    s = summarize([0.001, 0.002, 0.003, 0.010], batch=1)  # median (2 + 3) / 2 = 2.5 ms; 4 / 0.016 s = 250 img/s
    assert s["latency_ms_median"] == 2.5 and s["throughput_ips"] == 250.0 and s["latency_ms_mean"] == 4.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-5, 10.0), min_size=1, max_size=50), st.integers(1, 64))
def test_percentiles_are_ordered_and_throughput_is_images_over_time(latencies, batch):
    s = summarize(latencies, batch)
    lo, hi = min(latencies) * 1e3, max(latencies) * 1e3
    assert lo - 1e-3 <= s["latency_ms_median"] <= s["latency_ms_p90"] <= s["latency_ms_p99"] <= hi + 1e-3
    assert lo - 1e-3 <= s["latency_ms_mean"] <= hi + 1e-3
    assert s["iterations"] == len(latencies)
    assert s["throughput_ips"] == pytest.approx(batch * len(latencies) / sum(latencies), rel=1e-3, abs=1e-3)


def cell(ms, img_s):
    return {"status": "ok", "latency_ms_median": ms, "throughput_ips": img_s}


def test_merged_rounds_keep_the_lower_median_round_and_every_round_figure():
    """Four rounds of 30, 25, 27 and 40 ms: sorted 25 27 30 40, the round at index (4 - 1) // 2 = 1 is 27 ms
    (a real round, not the mean of two); a skipped round is left out of the count and of the spread."""
    rounds = [{"1": cell(30.0, 33.0)}, {"1": cell(25.0, 40.0)}, {"1": {"status": "skipped", "reason": "x"}},
              {"1": cell(27.0, 37.0)}, {"1": cell(40.0, 25.0)}]
    merged = merge_rounds(rounds)["1"]
    assert merged == {"status": "ok", "latency_ms_median": 27.0, "throughput_ips": 37.0, "rounds": 4,
                      "latency_ms_median_rounds": [30.0, 25.0, 27.0, 40.0],
                      "throughput_ips_rounds": [33.0, 40.0, 37.0, 25.0]}
    odd = merge_rounds([{"8": cell(9.0, 1.0)}, {"8": cell(7.0, 2.0)}, {"8": cell(8.0, 3.0)}])["8"]
    assert odd["latency_ms_median"] == 8.0 and odd["throughput_ips"] == 3.0 and odd["rounds"] == 3
    assert merge_rounds([{"1": cell(1.23456, 2.34567)}])["1"]["latency_ms_median_rounds"] == [1.235]
    assert merge_rounds([{"1": cell(1.23456, 2.34567)}])["1"]["throughput_ips_rounds"] == [2.35]
    skipped = {"status": "skipped", "reason": "no GPU"}
    assert merge_rounds([{"1": skipped}, {"1": skipped}]) == {"1": skipped}


# ---------------------------------------------------------------- training: FLOPs and images/s

def fake_layer(output_shape, *kernels, bias=None, trainable=True):
    """What layer_flops reads of a Keras layer: weights with a path and a shape, and the output's shape."""
    weights = [SimpleNamespace(path=f"layer/{name}", shape=shape) for name, shape in kernels]
    if bias:
        weights.append(SimpleNamespace(path="layer/bias", shape=bias))
    return SimpleNamespace(weights=weights, output=SimpleNamespace(shape=output_shape),
                           trainable_weights=weights if trainable else [])


def test_flops_of_one_layer_by_hand():
    # Dense 3 -> 5: one position, 15 multiply-adds: 2 x 15 = 30 FLOPs (the bias is not a kernel)
    assert layer_flops(fake_layer((None, 5), ("kernel", (3, 5)), bias=(5,))) == 30
    # 3x3 conv 2 -> 8 channels on a 4x4 output: 2 x 16 positions x (3 x 3 x 2 x 8 = 144) = 4608
    assert layer_flops(fake_layer((None, 4, 4, 8), ("kernel", (3, 3, 2, 8)))) == 4608
    # separable: depthwise 3x3x4x1 and pointwise 1x1x4x6 both at the 5x5 output: 2 x 25 x (36 + 24) = 3000
    assert layer_flops(fake_layer((None, 5, 5, 6), ("depthwise_kernel", (3, 3, 4, 1)),
                                  ("pointwise_kernel", (1, 1, 4, 6)))) == 3000
    assert layer_flops(fake_layer((None, 4, 4, 8))) == 0  # no kernel: pooling, activation, BatchNorm
    assert layer_flops(fake_layer((None, 4), ("gamma", (4,)), bias=(4,))) == 0


def test_a_training_step_is_three_forward_passes_of_the_trainable_layers_and_one_of_the_frozen():
    import keras

    frozen = fake_layer((None, 4, 4, 8), ("kernel", (3, 3, 2, 8)), trainable=False)  # 4608 forward
    head = fake_layer((None, 5), ("kernel", (8, 5)), bias=(5,))  # 2 x 40 = 80 forward
    model = SimpleNamespace(layers=[frozen, fake_layer((None, 8)), head])
    # forward 4608 + 80 = 4688; a step: forward + 2 x the trainable 80 = 4848
    assert training_flops(model) == {"forward": 4688, "train_step": 4848}
    # a real one-layer Keras model: Dense 3 -> 5 inside a nested backbone, 30 forward, 90 a step
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5)])
    outer = keras.Sequential([keras.Input((3,)), inner])
    assert training_flops(outer) == {"forward": 30, "train_step": 90}


class Ckpt:
    def __init__(self):
        self.rows = []

    def record(self, phase, row):
        self.rows.append((phase, row))


def test_training_images_per_second_from_known_timings():
    """Two epochs of 100 images in 4 s and 60 images in 2 s: 25 and 30 images/s each, 160 images in 6 s in all
    (26.67 images/s for the run); FLOPs 160 x 1000 per image; a replayed epoch counts for nothing."""
    result, live, ckpt = Result(), FakeLive(), Ckpt()
    log = EpochLog(live, result, ckpt)
    log.step_flops = 1000
    log.epoch("head", {"loss": 1.0, "accuracy": 0.5, "lr": 3.0}, images=100, seconds=4.0)
    log.epoch("head", {"loss": float("nan")}, images=60, seconds=2.0)
    assert [h["images_per_second"] for h in result.history] == [25.0, 30.0]
    assert [h["seconds"] for h in result.history] == [4.0, 2.0] and [h["epoch"] for h in result.history] == [1, 2]
    assert "lr" not in result.history[0] and result.history[0]["phase"] == "head"
    assert (result.images_seen, result.train_seconds, result.flops) == (160, 6.0, 160_000)
    assert round(result.images_seen / result.train_seconds, 2) == 26.67
    assert [p for p, _ in ckpt.rows] == ["head", "head"]
    assert ("loss" in [n for _, n, _ in live.rows]) and live.step == 2
    assert (1, "loss", float("nan")) not in live.rows and [v for s, n, v in live.rows if n == "loss"] == [1.0]
    log.replay([{"phase": "head", "loss": 0.9, "seconds": 5.0}])
    assert (result.images_seen, result.train_seconds, len(ckpt.rows), len(result.history)) == (160, 6.0, 2, 3)
    assert result.history[2]["images_per_second"] == 0.0 and result.history[2]["seconds"] == 5.0
    log.epoch("head", {}, images=10, seconds=0.0)  # an epoch too short to time: 0 images/s, not a division error
    assert result.history[3]["images_per_second"] == 0.0
    assert Result(history=[{"val_accuracy": 0.4}, {"loss": 1.0}, {"val_accuracy": 0.7}]).best_val_accuracy == 0.7
    assert Result().best_val_accuracy == 0.0


def test_an_epoch_a_budget_stops_early_counts_the_images_of_the_steps_it_ran():
    """100 images an epoch in 10 steps, stopped after 4: 40 images; a whole epoch: 100."""
    result = Result()
    cb = EpochLog(FakeLive(), result, Ckpt()).callback("scratch", images_per_epoch=100)
    cb.params = {"steps": 10}
    for steps in (4, 10):
        cb.on_epoch_begin(0)
        for b in range(steps):
            cb.on_train_batch_end(b)
        cb.on_epoch_end(0, {"loss": 1.0})
    assert [h["phase"] for h in result.history] == ["scratch", "scratch"] and result.images_seen == 140


# ---------------------------------------------------------------- the stratified split

def test_images_a_split_takes_from_a_class():
    assert _count(10, 0.2) == 2 and _count(100, 0.15) == 15
    assert _count(3, 0.1) == 1  # 0.3 rounds to 0, but a non-zero fraction takes at least one
    assert _count(2, 0.5) == 0 and _count(0, 0.5) == 0  # fewer than 3 images: all go to train
    assert _count(50, 0.0) == 0 and _count(50, -0.1) == 0
    assert _count(17, 0.1) == 2 and _count(19, 0.1) == 2  # 1.7 and 1.9 round to 2


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 25), min_size=1, max_size=6), st.floats(0.0, 0.4), st.floats(0.0, 0.4),
       st.integers(0, 2**32 - 1))
def test_splits_are_disjoint_covering_stratified_and_reproducible(sizes, val, test, seed):
    items = [[f"c{c}/img{i:03d}.jpg" for i in range(n)] for c, n in enumerate(sizes)]
    out = stratified_split(items, val, test, seed)
    assert set(out) == set(SPLITS)
    pairs = [pair for name in SPLITS for pair in out[name]]
    assert len(pairs) == len(set(pairs))  # disjoint
    assert sorted(pairs) == sorted((x, c) for c, xs in enumerate(items) for x in xs)  # covering, labels kept
    for c, n in enumerate(sizes):
        got = {name: sum(1 for _, lab in out[name] if lab == c) for name in SPLITS}
        assert got["test"] == min(_count(n, test), n)
        assert got["val"] == min(_count(n, val), n - got["test"])
        if n >= 3 and test > 0:  # stratified: each class gives the test split its share, rounded, at least one
            assert abs(got["test"] - n * test) <= 0.5 + 1e-9 or got["test"] == 1
    assert out == stratified_split(items, val, test, seed)


def test_a_split_depends_on_the_seed_not_on_the_order_items_are_listed_in():
    items = [[f"{c}/{i}" for i in range(12)] for c in range(3)]
    shuffled = [list(reversed(x)) for x in items]
    assert stratified_split(items, 0.25, 0.25, 7) == stratified_split(shuffled, 0.25, 0.25, 7)
    assert stratified_split(items, 0.25, 0.25, 7) != stratified_split(items, 0.25, 0.25, 8)
    # within each split, the classes are interleaved (shuffled by the seed), not in label order
    labels = [lab for _, lab in stratified_split(items, 0.0, 0.0, 7)["train"]]
    assert labels != sorted(labels)


# ---------------------------------------------------------------- recommend: floors, ties, margins

def evaluated(**formats):
    return {"formats": {"keras": {"status": "ok", "accuracy": 0.80, "top1_agreement": 1.0, "size_mb": 80.0},
                        **formats}}


def test_accuracy_floor_just_above_and_just_below():
    """Floor 0.99 x the trained model's 0.80 = 0.792: 0.792 passes (equal, within float rounding), 0.7919 not."""
    floors = Floors(0.99, 0.995)
    at = evaluated(onnx={"status": "ok", "accuracy": 0.792, "top1_agreement": 1.0})
    under = evaluated(onnx={"status": "ok", "accuracy": 0.7919, "top1_agreement": 1.0})
    assert floor_reason("onnx", at["formats"], floors) == ""
    assert floor_reason("onnx", under["formats"], floors) == (
        "test accuracy 0.7919 is under 0.99 x the trained model's 0.8000")
    # without a scored reference there is no accuracy floor, only the agreement floor
    alone = {"onnx": {"status": "ok", "accuracy": 0.1, "top1_agreement": 1.0}}
    assert floor_reason("onnx", alone, floors) == ""


def test_agreement_floor_just_above_and_just_below():
    floors = Floors(0.99, 0.995)
    at = evaluated(onnx={"status": "ok", "accuracy": 0.80, "top1_agreement": 0.995})
    under = evaluated(onnx={"status": "ok", "accuracy": 0.80, "top1_agreement": 0.9949})
    assert floor_reason("onnx", at["formats"], floors) == ""
    assert floor_reason("onnx", under["formats"], floors) == (
        "top-1 agreement 0.9949 is under serve.min_agreement 0.995")
    missing = evaluated(onnx={"status": "ok", "accuracy": 0.80})  # no agreement recorded: 0, under any floor
    assert floor_reason("onnx", missing["formats"], floors).startswith("top-1 agreement 0.0000")


def test_what_was_never_scored_ships_only_when_it_computes_in_float32():
    scored = evaluated(**{"tflite-int8": {"status": "skipped", "reason": "no calibration data"}})["formats"]
    assert floor_reason("keras", scored, Floors()) == ""
    assert floor_reason("onnx", scored, Floors()) == ""  # float32, like the trained model
    assert floor_reason("openvino-int8", scored, Floors()) == "not scored by evaluate"
    assert floor_reason("tflite-int8", scored, Floors()) == "no calibration data"
    assert floor_reason("keras", {"keras": {"status": "skipped"}}, Floors()) == "not scored by evaluate"
    d = decide(evaluated(low={"status": "ok", "accuracy": 0.1, "top1_agreement": 0.1},
                         gone={"status": "skipped", "reason": "r"}), {"results": {}})
    assert d["formats"]["low"]["status"] == "below_floor" and d["formats"]["gone"] == {"status": "excluded",
                                                                                       "reason": "r"}
    assert d["formats"]["keras"] == {"status": "ok"}


def timed(ms, rounds_ms, img_s, rounds_img_s, p99=None):
    return {"status": "ok", "latency_ms_median": ms, "latency_ms_p99": p99 if p99 is not None else ms,
            "throughput_ips": img_s, "latency_ms_median_rounds": rounds_ms, "throughput_ips_rounds": rounds_img_s}


def two_formats(onnx_b1, openvino_b1):
    ev = evaluated(onnx={"status": "ok", "accuracy": 0.80, "top1_agreement": 1.0, "size_mb": 40.0},
                   **{"openvino-float32": {"status": "ok", "accuracy": 0.80, "top1_agreement": 1.0, "size_mb": 30.0}})
    bench = {"results": {"onnx": {"cpu": {"b1": onnx_b1}}, "openvino-float32": {"cpu": {"b1": openvino_b1}}}}
    return ev, bench


def test_latency_tie_rule_at_its_boundary():
    """onnx's rounds span 24-27 ms; openvino's fastest round at 27 ms touches it (a tie), at 27.01 ms not."""
    onnx = timed(25.0, [24.0, 25.0, 27.0], 40.0, [41.0, 40.0, 37.0])
    for fastest, tie in ((27.0, True), (27.01, False)):
        ev, bench = two_formats(onnx, timed(30.0, [fastest, 30.0, 31.0], 33.0, [37.0, 33.0, 32.0]))
        latency = decide(ev, bench)["devices"]["cpu"]["latency"]
        assert latency["format"] == "onnx" and latency["tie"] is tie
        assert latency["tied_with"] == (["openvino-float32"] if tie else [])
        assert latency["margin"] == 1.2 and latency["runner_up_value"] == 30.0  # 30 / 25


def test_throughput_tie_rule_at_its_boundary():
    """onnx's rounds span 40-44 img/s; openvino's best round at 40 touches it (a tie), at 39.99 not; the margin
    is 42 / 35 = 1.2."""
    onnx = timed(25.0, [25.0], 42.0, [40.0, 42.0, 44.0])
    for best_round, tie in ((40.0, True), (39.99, False)):
        ev, bench = two_formats(onnx, timed(30.0, [30.0], 35.0, [33.0, 35.0, best_round]))
        throughput = decide(ev, bench)["devices"]["cpu"]["throughput"]
        assert throughput["format"] == "onnx" and throughput["tie"] is tie and throughput["margin"] == 1.2
        assert throughput["ranking"] == ["onnx", "openvino-float32"] and throughput["batch_size"] == 1


def test_a_one_round_cell_spreads_over_its_median_alone():
    assert _spread({"latency_ms_median": 5.0}, "latency_ms_median") == (5.0, 5.0)
    assert _spread({"x": 1.0, "x_rounds": [3.0, 1.0, 2.0]}, "x") == (1.0, 3.0)
    ev, bench = two_formats({"status": "ok", "latency_ms_median": 10.0, "latency_ms_p99": 10.0, "throughput_ips": 100},
                            {"status": "ok", "latency_ms_median": 10.0, "latency_ms_p99": 10.0, "throughput_ips": 99})
    latency = decide(ev, bench)["devices"]["cpu"]["latency"]
    assert latency["tie"] and latency["margin"] == 1.0  # equal medians, one round each: a tie


def test_choice_ranks_with_margin_and_names_the_runner_up():
    entries = [{"format": "a", "ms": 30.0}, {"format": "b", "ms": 20.0}, {"format": "c", "ms": 50.0}]
    c = _choice(entries, "ms", True, {"b": {"accuracy": 0.9, "top1_agreement": 0.99}})
    assert (c["format"], c["ranking"], c["runner_up"], c["runner_up_value"], c["margin"]) == (
        "b", ["b", "a", "c"], "a", 30.0, 1.5)
    assert (c["accuracy"], c["agreement"], c["tie"], c["tied_with"]) == (0.9, 0.99, False, [])
    c = _choice([{"format": "a", "img_s": 30.0}, {"format": "b", "img_s": 45.0}], "img_s", False, {})
    assert (c["format"], c["margin"], c["accuracy"]) == ("b", 1.5, None)
    only = _choice([{"format": "a", "mb": 3.0}], "mb", True, {})
    assert "runner_up" not in only and "tie" not in only and only["ranking"] == ["a"]


def test_budget_boundary_batch_choice_and_headline_rounding():
    """Budget 100 ms: a cell at p99 exactly 100 ms is within it, one at 100.01 ms not; the most images/s within
    wins. Batch 1 is the latency cell; the most images/s of any batch the throughput cell."""
    ev = evaluated(onnx={"status": "ok", "accuracy": 0.80, "top1_agreement": 1.0, "size_mb": 12.345})
    bench = {"results": {"onnx": {"cpu": {"b1": timed(4.444, [4.444], 225.0, [225.0], p99=5.0),
                                          "b16": timed(60.0, [60.0], 266.666, [266.666], p99=100.0),
                                          "b8": timed(30.0, [30.0], 300.0, [300.0], p99=100.01),
                                          "b2": {"status": "skipped", "reason": "x"}}}}}
    d = decide(ev, bench, budget_ms=100.0)
    cpu = d["devices"]["cpu"]
    assert (cpu["latency"]["format"], cpu["latency"]["batch_size"], cpu["latency"]["ms"]) == ("onnx", 1, 4.444)
    assert cpu["latency"]["p99_ms"] == 5.0
    assert (cpu["throughput"]["batch_size"], cpu["throughput"]["img_s"]) == (8, 300.0)
    assert (cpu["budget"]["batch_size"], cpu["budget"]["img_s"], cpu["budget"]["p99_ms"]) == (16, 266.666, 100.0)
    assert d["size"]["format"] == "onnx" and d["size"]["mb"] == 12.345
    assert headline(d) == {"ship_b1_ms": 4.44, "ship_img_s": 300.0, "ship_budget_img_s": 266.7, "ship_mb": 12.35}
    assert d["floors"] == {"min_accuracy_ratio": 0.99, "min_agreement": 0.995, "latency_budget_ms": 100.0}
    assert d["reference"] == {"format": "keras", "accuracy": 0.8}
    text = render(d)
    assert "lowest latency           onnx b1: 4.44 ms, acc 0.800, agree 1.000 (the only candidate)" in text
    assert "most images/s in budget  onnx b16: 266.7 img/s" in text and "smallest file" in text
    assert "budget: p99 <= 100 ms" in text and "top-1 agreement >= 0.995" in text
    assert headline({"devices": {}}) == {}


def test_decide_skips_devices_with_nothing_timed_and_render_says_so():
    ev = evaluated(onnx={"status": "ok", "accuracy": 0.80, "top1_agreement": 1.0})
    bench = {"results": {"onnx": {"cpu": {"b1": {"status": "skipped", "reason": "x"}},
                                  "gpu": {"b1": timed(2.0, [2.0], 500.0, [500.0])}}}}
    d = decide(ev, bench)
    assert list(d["devices"]) == ["gpu"] and d["size"]["ranking"] == ["keras"]  # onnx has no size recorded
    assert "GPU:" in render(d)
    empty = decide(ev, {"results": {}})
    assert empty["devices"] == {} and "nothing timed yet above the floors" in render(empty)
    assert "?" in render(decide({"formats": {}}, {"results": {}}))  # no trained-model accuracy: a question mark


# ---------------------------------------------------------------- the digits each figure is reported to

def test_each_figure_is_rounded_to_its_stated_places():
    # a row summing to 1.0012345678: its error 0.0012345678 is reported to 6 places
    row = np.array([[0.5, 0.5012345678]])
    assert agreement(row, row)["max_sum_error"] == 0.001235
    # labels 0 0 1, predicted 0 0 0: class 0's precision 2/3 to 4 places; class 1 never predicted: 0, no error
    s = score(one_hot(np.array([0, 0, 0]), 2), np.array([0, 0, 1]), ["a", "b"])
    assert s["per_class"]["a"]["precision"] == 0.6667 and s["per_class"]["b"]["precision"] == 0.0
    assert predict_batches(None, np.zeros((0, 4)), 2).dtype == np.float32
    # calls of 1, 2 and 4.1234567 ms at batch 3: mean 7.1234567 / 3 = 2.37448557 -> 2.3745 ms;
    # 9 images / 0.0071234567 s = 1263.4319... -> 1263.432 images/s; p90 at index 1.8: 2 + 0.8 x 2.1234567 = 3.6988
    assert summarize([0.001, 0.002, 0.0041234567], 3) == {
        "iterations": 3, "latency_ms_median": 2.0, "latency_ms_mean": 2.3745, "latency_ms_p90": 3.6988,
        "latency_ms_p99": 4.081, "throughput_ips": 1263.432}
    # 100 images in 3 s: 33.333 images/s; 4.12345 s reported as 4.123
    result = Result()
    log = EpochLog(FakeLive(), result, Ckpt())
    log.epoch("head", {}, images=100, seconds=3.0)
    log.epoch("head", {}, images=100, seconds=4.12345)
    assert [(h["seconds"], h["images_per_second"]) for h in result.history] == [(3.0, 33.333), (4.123, 24.252)]


def test_an_epoch_of_unknown_steps_counts_whole_and_never_more_than_whole():
    result = Result()
    cb = EpochLog(FakeLive(), result, Ckpt()).callback("head", images_per_epoch=100)
    cb.params = {}  # no step count given and no step run: the whole epoch's images, not a division by zero
    cb.on_epoch_begin(0)
    cb.on_epoch_end(0, {"loss": 2.0})
    cb.params = {"steps": 10}  # 12 steps of a 10-step epoch: still 100 images, not 120
    cb.on_epoch_begin(1)
    for b in range(12):
        cb.on_train_batch_end(b)
    cb.on_epoch_end(1, None)
    assert result.images_seen == 200 and [h.get("loss") for h in result.history] == [2.0, None]
    assert all(0 <= h["seconds"] < 60 for h in result.history)  # this epoch's own time, from its start
    log = EpochLog(FakeLive(), result, Ckpt())
    log.replay([{"phase": "scratch"}])  # a replayed epoch without a time: 0 s, under its own phase
    assert result.history[-1]["phase"] == "scratch" and result.history[-1]["seconds"] == 0.0


def test_a_nested_backbone_is_opened_so_its_frozen_layers_count_once():
    """A backbone of Dense 3 -> 4 (frozen, 24 FLOPs) and Dense 4 -> 5 (40 FLOPs) inside a model: forward 64;
    a step 64 + 2 x 40 = 144 (the backbone counted as one trainable layer would give 64 + 2 x 64 = 192)."""
    import keras

    backbone = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(5)])
    backbone.layers[0].trainable = False
    model = keras.Sequential([keras.Input((3,)), backbone])
    assert training_flops(model) == {"forward": 64, "train_step": 144}


# ---------------------------------------------------------------- merging rounds and deciding: the edges

def test_rounds_that_miss_a_batch_or_skip_first_merge_what_there_is():
    skipped_a, skipped_b = {"status": "skipped", "reason": "a"}, {"status": "skipped", "reason": "b"}
    merged = merge_rounds([{"8": skipped_a, "1": cell(10.0, 100.0), "4": skipped_a},
                           {"1": cell(12.0, 90.0), "4": skipped_b}])  # the second round has no batch 8
    assert list(merged) == ["8", "1", "4"] and merged["8"] == skipped_a and merged["4"] == skipped_a
    assert merged["1"]["rounds"] == 2 and merged["1"]["latency_ms_median"] == 10.0


def test_decide_on_missing_records_and_formats_timed_but_never_evaluated():
    empty = decide({}, {})
    assert empty["devices"] == {} and empty["formats"] == {} and empty["floors"]["latency_budget_ms"] == 100.0
    ev = evaluated()
    bench = {"results": {"openvino-int8": {"cpu": {"b1": timed(1.0, [1.0], 900.0, [900.0])}},
                         "onnx": {"cpu": {"b1": timed(2.0, [2.0], 500.0, [500.0], p99=100.5)}}}}
    d = decide(ev, bench)  # the default budget: p99 100 ms
    assert d["formats"]["openvino-int8"] == {"status": "excluded", "reason": "not scored by evaluate"}
    assert d["formats"]["onnx"] == {"status": "ok"}  # float32, never evaluated: may ship
    assert d["devices"]["cpu"]["latency"]["format"] == "onnx" and d["size"]["ranking"] == ["keras"]
    assert d["devices"]["cpu"]["budget"] == {"none": "no format answers within p99 100 ms on the cpu"}


def test_the_budget_goal_takes_the_most_images_per_second_and_ties_on_its_rounds():
    """Within the budget, batch 4 (300 img/s) beats the larger batch 8 (250); onnx's best budget cell's rounds
    (290-310) overlap openvino's (280-291): a tie; the margin 300 / 285 = 1.053."""
    ev, _ = two_formats(None, None)
    bench = {"results": {
        "onnx": {"cpu": {"b4": timed(13.0, [13.0], 300.0, [290.0, 300.0, 310.0], p99=20.0),
                         "b8": timed(32.0, [32.0], 250.0, [250.0], p99=40.0)}},
        "openvino-float32": {"cpu": {"b4": timed(14.0, [14.0], 285.0, [280.0, 285.0, 291.0], p99=20.0)}}}}
    budget = decide(ev, bench, budget_ms=50.0)["devices"]["cpu"]["budget"]
    assert (budget["format"], budget["batch_size"], budget["img_s"]) == ("onnx", 4, 300.0)
    assert budget["tie"] and budget["tied_with"] == ["openvino-float32"] and budget["margin"] == 1.053


def test_margins_to_3_places_and_the_accuracy_floor_to_the_last_bit():
    c = _choice([{"format": "a", "ms": 30.0}, {"format": "b", "ms": 35.0}], "ms", True, {})
    assert c["margin"] == 1.167  # 35 / 30 = 1.1666...
    floor = 0.99 * 0.80 - 1e-12  # the floor less its float tolerance: still not under it
    assert floor_reason("onnx", evaluated(onnx={"status": "ok", "accuracy": floor, "top1_agreement": 1.0})["formats"],
                        Floors(0.99, 0.995)) == ""


def test_the_headline_rounds_each_figure_to_its_places():
    ev = evaluated(onnx={"status": "ok", "accuracy": 0.80, "top1_agreement": 1.0, "size_mb": 12.345})
    bench = {"results": {"onnx": {"cpu": {"b1": timed(4.444, [4.444], 300.06, [300.06], p99=5.0)}}}}
    d = decide(ev, bench)
    assert headline(d) == {"ship_b1_ms": 4.44, "ship_img_s": 300.1, "ship_budget_img_s": 300.1, "ship_mb": 12.35}


def test_a_cells_gflops_are_its_batchs_flops_over_its_median_call():
    from flowerpipe.measure.harness import achieved_gflops

    # Xception 299: 16.8 GFLOP an image; 8 images in 420 ms is 134.4 GFLOP in 0.42 s
    assert achieved_gflops(16.8e9, 8, 420.0) == pytest.approx(320.0)
    assert achieved_gflops(16.8e9, 1, 420.0) == pytest.approx(40.0)  # the batch counts, not only the call
