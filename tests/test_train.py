import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import (
    ROOT,
    TINY,
    FakeLive,
    call_stage,
    git_project,
    make_photos,
    run_stage,
    sh,
    stage_cli,
    write_params,
)

from flowerpipe.errors import UserError
from flowerpipe.measure.cpu import bf16_missing, flags
from flowerpipe.measure.loadtest import free_port
from flowerpipe.model import xception
from flowerpipe.model.build import backbone_of, load_model
from flowerpipe.training.strategy import choose_strategy, precision_policy


@pytest.mark.parametrize("name, gpus, workers, expected", [
    ("auto", 0, 0, "default"), ("auto", 1, 0, "default"), ("auto", 4, 0, "mirrored"),
    ("auto", 0, 2, "multi_worker"), ("mirrored", 0, 0, "mirrored"), ("default", 8, 0, "default"),
])
def test_strategy_choice(name, gpus, workers, expected):
    assert choose_strategy(name, gpus, workers) == expected


def test_multi_worker_needs_tf_config():
    with pytest.raises(UserError, match="TF_CONFIG"):
        choose_strategy("multi_worker", 0, 0)


@pytest.mark.parametrize("setting,gpus,bf16,expected", [
    ("auto", 1, "", "mixed_float16"), ("auto", 0, "", "mixed_bfloat16"), ("auto", 0, "no bf16", "float32"),
    ("float16", 0, "no bf16", "mixed_float16"), ("bfloat16", 2, "no bf16", "mixed_bfloat16"), ("off", 1, "", "float32"),
])
def test_precision_policy(setting, gpus, bf16, expected):
    assert precision_policy(setting, gpus, bf16) == expected


def test_bf16_is_read_from_the_cpu_flags_never_assumed(tmp_path):
    assert bf16_missing(frozenset({"avx2", "avx512f", "avx512_bf16"})) == ""
    assert bf16_missing(frozenset({"avx2", "amx_tile", "amx_bf16"})) == ""
    assert "neither AVX512_BF16 nor AMX-BF16" in bf16_missing(frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert "unknown" in bf16_missing(frozenset())
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert flags(str(tmp_path / "missing")) == frozenset()


def test_train_outputs_and_reload(trained):
    record = json.loads((trained / "reports" / "train.json").read_text())
    assert record["epochs_run"] == 8 and record["strategy"] == "default"
    assert [h["phase"] for h in record["history"]] == ["scratch"] * 8
    live = json.loads((trained / "dvclive" / "metrics.json").read_text())
    assert live["step"] == 7 and live["train_seconds"] > 0 and live["train_img_s"] > 0
    # the headline is the saved model's own val accuracy; from scratch, the tiny set is learnt, not one class
    assert live["model_val_accuracy"] == record["saved_model_val_accuracy"] >= 0.6
    curve = pd.read_csv(trained / "dvclive" / "plots" / "metrics" / "val_accuracy.tsv", sep="\t")
    assert list(curve.step) == list(range(8))
    assert curve.val_accuracy.round(4).tolist() == [round(h["val_accuracy"], 4) for h in record["history"]]
    assert not (trained / "models" / "train" / "checkpoints").exists()
    # reloaded in a fresh process, the saved file scores what the training process measured before saving it
    code = textwrap.dedent(f"""
        from flowerpipe.model.build import load_model
        from flowerpipe.training.saving import accuracy_on
        model = load_model({str(trained / 'models/model.keras')!r})
        print(accuracy_on(model, {str(trained / 'data/tfrecords')!r}, "val", 71, 8))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=300, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert round(float(out.split()[-1]), 4) == record["saved_model_val_accuracy"]


def test_checkpoints_of_other_params_or_data_are_dropped(tmp_path):
    from flowerpipe.training.checkpoints import Checkpoints

    ckpt = Checkpoints(tmp_path / "ckpt", "key-a")
    ckpt.record("scratch", {"epoch": 1, "phase": "scratch", "loss": 1.0})
    assert Checkpoints(tmp_path / "ckpt", "key-a").history("scratch") == [{"epoch": 1, "phase": "scratch", "loss": 1.0}]
    fresh = Checkpoints(tmp_path / "ckpt", "key-b")
    assert fresh.history("scratch") == [] and fresh.done("scratch") is None
    assert not (tmp_path / "ckpt" / "state.json").exists()  # the other run's state was removed with its folder


@pytest.mark.slow
def test_phase_resume_logs_the_restored_epochs(tmp_path):
    """A finished phase is not trained again after an interruption, and its epochs are logged again.

    The phase ends by its time budget: 6 ms, spent by the first of its 3 epochs.
    """
    make_photos(tmp_path / "photos", per_class=6)
    write_params(tmp_path, {**TINY, "data": {"url": str(tmp_path / "photos")},
                            "train": {**TINY["train"], "scratch_epochs": 3, "scratch_minutes": 1e-4}})
    call_stage("download", tmp_path)
    call_stage("tfrecords", tmp_path)
    # Both runs in one process (what a resumed run reads is on disk), to spare a TensorFlow start-up
    code = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from flowerpipe.params import load
        from dvclive import Live
        from flowerpipe.training.run import fit
        p = load("params.yaml")
        for _ in range(2):
            with Live("live", dvcyaml=None, save_dvc_exp=False) as live:
                _, r, _ = fit(Path(p.paths.tfrecords), p.model, p.train, Path("ckpt"), live)
            print(json.dumps({"resumed": r.resumed_from, "epochs": r.epochs_run, "budget": r.budget_epochs}))
            print(json.dumps({"images": r.images_seen}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600, check=True).stdout
    lines = [json.loads(line) for line in out.strip().splitlines()[-4:]]
    first, again = lines[0], lines[2]
    n_train = json.loads((tmp_path / "data" / "tfrecords" / "manifest.json").read_text())["splits"]["train"]["count"]
    assert 0 < lines[1]["images"] < n_train  # the epoch the budget cut after its first step counts that share
    assert first == {"resumed": "", "epochs": 1, "budget": 1}  # the budget, not scratch_epochs, ended the phase
    assert again == {"resumed": "scratch", "epochs": 1, "budget": 1}  # the finished phase is restored, not rerun
    curve = (tmp_path / "live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    assert len(curve) == 2  # header and the restored phase's epoch, logged again: the curve stays whole


FIT_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import tensorflow as tf
    if sys.argv[1] == "logical":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from dvclive import Live
    from flowerpipe.params import load
    from flowerpipe.training.run import fit
    import numpy as np
    p = load("params.yaml")
    with Live(f"live-{sys.argv[2]}", dvcyaml=None, save_dvc_exp=False) as live:
        model, r, _ = fit(Path(p.paths.tfrecords), p.model, p.train, Path(sys.argv[2]), live)
    # every replica's copy of every variable (one per device under MirroredStrategy)
    backing = [getattr(v, "value", v) for v in model.variables]  # keras.Variable -> the tf (distributed) variable
    copies = [[np.asarray(c) for c in getattr(b, "values", [b])] for b in backing]
    differ = [v.path for v, c in zip(model.variables, copies) if any(not np.array_equal(c[0], x) for x in c[1:])]
    agree = not differ
    print(json.dumps({"replicas": r.replicas, "strategy": r.strategy, "epochs": r.epochs_run, "budget": r.budget_epochs,
                      "copies": max(len(c) for c in copies), "agree": agree, "differ": differ[:8],
                      "loss": [h["loss"] for h in r.history]}))
""")


@pytest.fixture
def tiny_records(tmp_path):
    make_photos(tmp_path / "photos", per_class=6)
    return tmp_path


def _prepare(folder: Path, strategy: str) -> None:
    """Params and TFRecords for 4 short scratch epochs, within a time budget (60 minutes: all of them)."""
    write_params(folder, {**TINY, "data": {"url": str(folder / "photos")},
                          "train": {**TINY["train"], "strategy": strategy, "batch_size": 4, "max_steps_per_epoch": 2,
                                    "scratch_epochs": 4, "scratch_minutes": 60, "deterministic": False}})
    call_stage("download", folder)
    call_stage("tfrecords", folder)


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tiny_records):
    _prepare(tiny_records, "mirrored")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", FIT_SCRIPT, "logical", "ckpt"], cwd=tiny_records, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["replicas"], result["strategy"], result["epochs"], result["copies"]) == (2, "mirrored", 4, 2)
    assert result["budget"] == 4  # the budget's clock callback works under MirroredStrategy
    # 4 epochs of a few steps end long before 60 minutes: one line says why the budget was not spent
    assert "train.scratch_epochs=4 reached" in out.stderr, out.stderr[-2000:]
    assert result["agree"], f"the two replicas' variables differ after training: {result['differ']}"
    assert result["loss"][-1] < result["loss"][0], result["loss"]


@pytest.mark.parametrize("warmup", [0, 3])
def test_scratch_schedule_is_kerass_cosine_decay_until_a_budget_moves_its_end(warmup):
    from flowerpipe.training.schedule import warmup_cosine

    ours = warmup_cosine(2e-3, warmup, 40)
    keras_own = keras.optimizers.schedules.CosineDecay(2e-4 if warmup else 2e-3, 40 - warmup,
                                                       warmup_target=2e-3 if warmup else None, warmup_steps=warmup)
    steps = [0, 1, 2, 3, 4, 10, 25, 39, 40, 60]
    assert np.allclose([float(ours(s)) for s in steps], [float(keras_own(s)) for s in steps], rtol=1e-5, atol=1e-9)
    ours.total_steps.assign(20.0)  # a budget that fits half the epochs
    assert float(ours(20)) == 0.0 and float(ours(10)) > 0 and ours.get_config()["total_steps"] == 20.0


def test_time_budget_learning_rate_follows_the_clock_and_survives_a_slow_epoch():
    from flowerpipe.training.schedule import TimeBudget

    clock = TimeBudget(seconds=100, lr=1.0, warmup_steps=2, total_steps=10_000)
    assert [clock.rate(0, 0.0), clock.rate(1, 5.0)] == [0.1, 0.55]  # linear warm-up from lr / 10, by steps
    assert clock.rate(2, 10.0) == 1.0 and clock.warm_end == 10.0  # the decay starts where the warm-up ended
    assert clock.rate(3, 55.0) == pytest.approx(0.5)  # half the time after the warm-up: half the rate
    # a slow stretch (another process) only moves the schedule along: the rate is the clock's, not the step's
    assert clock.rate(4, 90.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 80 / 90)))
    clock.reserve = 5.0  # the last validation took 5 s: it must fit before the budget ends
    assert clock.rate(5, 95.0) == 0.0 and clock.spent(95.0) and not clock.spent(94.0)
    assert clock.spent(94.0, step_seconds=1.5)  # another step of 1.5 s would not fit
    capped = TimeBudget(seconds=100, lr=1.0, warmup_steps=0, total_steps=10)
    assert capped.rate(5, 0.0) == pytest.approx(0.5)  # half the epoch cap's steps trained first: half the rate
    assert TimeBudget(seconds=100, lr=0.3, warmup_steps=0, total_steps=10, cosine=False).rate(9, 99.0) == 0.3


def test_epoch_budget_refits_from_measured_epochs_and_only_shrinks_once_decaying():
    from flowerpipe.training.schedule import EpochBudget

    budget = EpochBudget(seconds=100, cap=50, warmup_epochs=2)
    # epoch 1 carries tracing (20 s): 5 fit; epoch 2 shows 10 s epochs: 2 + 70 / 10 = 9
    assert [budget.after_epoch(t) for t in (20, 10)] == [5, 9]
    assert budget.after_epoch(10) == 9  # decaying now, on time
    assert budget.after_epoch(30) == 5  # the machine slowed (shared mid-run): 4 + 30 / mean(10, 10, 30)
    assert budget.after_epoch(1) == 5  # faster again, but a decaying schedule never climbs back
    assert EpochBudget(seconds=1e6, cap=7, warmup_epochs=2).after_epoch(5) == 7  # never more than the cap
    no_warmup = EpochBudget(seconds=100, cap=50, warmup_epochs=0)  # epoch 2 still refits up: epoch 1 was tracing
    assert [no_warmup.after_epoch(t) for t in (20, 10, 30)] == [5, 9, 5]
    assert EpochBudget(seconds=1, cap=7, warmup_epochs=2).after_epoch(5) == 1  # a budget under an epoch: one


def test_a_resumed_run_replays_its_epochs_into_the_budget_with_one_log_line(caplog):
    from flowerpipe.training.schedule import EpochBudget, fit_to_budget, warmup_cosine

    budget, schedule = EpochBudget(seconds=100, cap=50, warmup_epochs=0), warmup_cosine(0.1, 0, 50 * 4)
    with caplog.at_level("INFO", logger="flowerpipe.training.schedule"):
        assert not fit_to_budget(budget, [20, 10, 10, 10], schedule, steps=4)  # 4 epochs of 50 s: 4 + 50 / 10
    assert budget.epochs == 9 and float(schedule.total_steps.numpy()) == 9 * 4
    assert [r.getMessage() for r in caplog.records] == [
        "train.scratch_minutes=1.66667: 9 epoch(s) in all fit the budget (4 trained in 50 s, the last 10 s)"]
    assert fit_to_budget(budget, [60], schedule, steps=4) and budget.epochs == 5  # slowed: spent after epoch 5


def test_features_belong_to_one_backbone_and_dataset(tmp_path):
    from flowerpipe.data.tfrecord import MANIFEST
    from flowerpipe.params import Model
    from flowerpipe.training import features

    m, data = Model(**TINY["model"]), tmp_path / "records"
    data.mkdir()
    (data / MANIFEST).write_text('{"classes": ["a"]}')
    key = features.key(m, data)
    assert features.key(m.model_copy(update={"dropout": 0.5, "name": "roses"}), data) == key  # the head's only
    assert features.key(m.model_copy(update={"image_size": 96}), data) != key
    (data / MANIFEST).write_text('{"classes": ["b"]}')
    assert features.key(m, data) != key  # other data
    feats = {"train": (np.ones((3, 4), np.float32), np.array([0, 1, 2])), "val": (np.zeros((1, 4)), np.array([1]))}
    features.save(tmp_path / "f", feats, key, 1.0)
    loaded = features.load(tmp_path / "f", key)
    assert loaded is not None and np.array_equal(loaded["train"][0], feats["train"][0])
    assert features.load(tmp_path / "f", "another-key") is None and features.load(tmp_path / "none", key) is None
    (tmp_path / "f" / "val_features.npy").write_bytes(b"not numpy")
    assert features.load(tmp_path / "f", key) is None  # unreadable: extracted again, never a crash
    (tmp_path / "f" / features.RECORD).write_text("{")
    assert features.load(tmp_path / "f", key) is None


def test_imagenet_weights_offline_is_one_clear_line(monkeypatch):
    from keras.src.utils import file_utils

    from flowerpipe.model.build import build_backbone
    from flowerpipe.params import Model

    def offline(*args, **kwargs):  # what Keras raises without a network
        raise Exception("URL fetch failure on https://storage.googleapis.com/w/xception_notop.h5: None -- "
                        "[Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(UserError, match=r"download the xception ImageNet weights \(https://storage.googleapis.com/"
                                        r"w/xception_notop.h5\).*set model.weights to its path"):
        build_backbone(Model(image_size=71))


@pytest.mark.parametrize("content", [b"junk", b"\x89HDF\r\n\x1a\n" + b"\0" * 64])
def test_a_weights_file_keras_cannot_load_is_one_line_naming_it(tmp_path, content):
    from flowerpipe.model.build import build_backbone
    from flowerpipe.params import Model

    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(content)
    with pytest.raises(UserError) as err:
        build_backbone(Model(image_size=71, weights=str(weights), width=0.125, middle_blocks=1))
    line = str(err.value)
    assert line.startswith(f"model.weights: {weights} is not a weights file this xception (image_size 71, width "
                           "0.125, middle_blocks 1) can load: ") and "\n" not in line


@pytest.mark.slow
def test_pretrained_weights_file_cached_head_then_fine_tune(tmp_path):
    """The default transfer path, with a weights file standing in for ImageNet: cached-feature head, then fine-tune."""
    make_photos(tmp_path / "photos", per_class=6)
    weights = tmp_path / "backbone.weights.h5"
    m = TINY["model"]
    xception.scaled(m["image_size"], m["width"], m["middle_blocks"]).save_weights(weights)
    write_params(tmp_path, {**TINY, "data": {"url": str(tmp_path / "photos")}, "model": {**m, "weights": str(weights)},
                            "train": {**TINY["train"], "epochs": 2, "fine_tune_epochs": 1, "fine_tune_layers": 10}})
    call_stage("download", tmp_path)
    call_stage("tfrecords", tmp_path)
    call_stage("features", tmp_path)
    run_stage("train", tmp_path)
    record = json.loads((tmp_path / "reports" / "train.json").read_text())
    assert [h["phase"] for h in record["history"]] == ["head", "head", "fine_tune"]
    assert record["head_features"] == "reused" and record["matmul_peak_gflops"] > 1 and "fraction_of_peak" in record
    # the features stage's features are the ones the train stage would extract: the same head epochs
    shutil.rmtree(tmp_path / "data" / "features")
    run_stage("train", tmp_path)
    again = json.loads((tmp_path / "reports" / "train.json").read_text())
    assert again["head_features"] == "extracted"
    for a, b in zip(record["history"][:2], again["history"][:2], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4) and a["val_accuracy"] == b["val_accuracy"], (a, b)
    # fine-tuning trained only the top 10 backbone layers, and no BatchNorm (weights or statistics)
    start = xception.scaled(m["image_size"], m["width"], m["middle_blocks"])
    start.load_weights(weights)
    tuned = backbone_of(load_model(tmp_path / "models" / "model.keras"))
    cut = len(tuned.layers) - 10
    changed = set()
    for i, (a, b) in enumerate(zip(start.layers, tuned.layers, strict=True)):
        assert a.name == b.name or not a.weights  # (input layers are numbered by Keras)
        if any(not np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights(), strict=True)):
            changed.add(i)
            assert i >= cut and not isinstance(b, keras.layers.BatchNormalization), (i, b.name)
    assert changed, "fine-tuning changed no backbone weight"
    write_params(tmp_path, {"model": {**m, "weights": str(tmp_path / "nope.h5")}})
    code, _, err = stage_cli("train", tmp_path)  # stops before any TensorFlow work: safe in this process
    assert code == 1 and err.startswith("error: model.weights: weights file") and "nope.h5 does not exist" in err


@pytest.mark.slow
def test_multi_worker_recipe_dvc_repro_train_in_two_checkouts(tmp_path):
    """The README's recipe: `dvc repro train` with TF_CONFIG in each worker's own checkout; both write one model."""
    photos = make_photos(tmp_path / "photos", per_class=6)
    train = {**TINY["train"], "strategy": "multi_worker", "batch_size": 4, "max_steps_per_epoch": 2,
             "scratch_epochs": 4, "scratch_minutes": 60, "deterministic": False}
    first, env = git_project(tmp_path / "worker0", {**TINY, "data": {"url": str(photos)}, "train": train})
    for name in ("download", "tfrecords"):  # the data, as `dvc pull` would bring it
        call_stage(name, first)
    sh(["dvc", "commit", "--force", "--with-deps", "tfrecords"], first, env)
    second = tmp_path / "worker1"
    shutil.copytree(first, second, symlinks=True)  # another host's clone after `dvc pull`
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    procs = [subprocess.Popen(["dvc", "repro", "train"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**env, "TF_CONFIG": json.dumps(
                                  {"cluster": cluster, "task": {"type": "worker", "index": i}})})
             for i, repo in enumerate((first, second))]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    records = [json.loads((repo / "reports" / "train.json").read_text()) for repo in (first, second)]
    for r in records:
        assert (r["replicas"], r["strategy"], r["epochs_run"], r["budget_epochs"]) == (2, "multi_worker", 4, 4)
        losses = [h["loss"] for h in r["history"]]
        assert losses[-1] < losses[0], losses
    assert records[0]["history"][-1]["loss"] == records[1]["history"][-1]["loss"]  # one all-reduced run
    models = [load_model(repo / "models" / "model.keras").get_weights() for repo in (first, second)]
    assert all(np.array_equal(a, b) for a, b in zip(*models, strict=True)), "the workers saved different weights"
    for repo in (first, second):
        assert "up to date" in sh(["dvc", "status", "train"], repo, env)  # every declared output written


def test_inference_copy_of_a_mixed_precision_model_computes_in_float32():
    """from_config alone keeps mixed_float16 on every layer; the exported copy computes in float32, on one device."""
    import keras

    from flowerpipe.training.saving import inference_copy

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((4,))
        x = keras.layers.BatchNormalization(synchronized=True)(keras.layers.Dense(3)(inp))  # as trained on replicas
        model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", dtype="float32")(x))
        assert {layer.dtype_policy.name for layer in model.layers[1:3]} == {"mixed_float16"}
        copy = inference_copy(model)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    assert copy.layers[2].synchronized is False
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    assert copy(x).dtype == "float32"
    assert np.allclose(copy(x), model(x), atol=2e-2)  # same weights; float16 compute differs only slightly


def test_custom_loop_optimizer_scales_the_loss_under_mixed_float16():
    """compile() adds loss scaling under mixed_float16; the multi-worker loop's optimizer must carry it too."""
    from flowerpipe.training.loops import optimizer_for

    assert not isinstance(optimizer_for(1e-3), keras.optimizers.LossScaleOptimizer)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        scaled = optimizer_for(1e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    assert float(scaled.scale_loss(keras.ops.convert_to_tensor(1.0))) > 1.0  # the loss really is scaled up


def test_mid_phase_resume_logs_the_epochs_before_the_crash_once(tmp_path):
    """Epochs of an interrupted phase come back into the history and the curves, not counted as new training."""
    from flowerpipe.training.checkpoints import Checkpoints
    from flowerpipe.training.epochs import EpochLog, Result

    first = Checkpoints(tmp_path / "ckpt", "key")
    log = EpochLog(FakeLive(), Result(), first)
    for loss in (1.5, 1.2):
        log.epoch("scratch", {"loss": loss, "val_accuracy": 0.5}, images=40, seconds=2.0)
    # the process dies here; the next run with the same params and data starts again
    live, result = FakeLive(), Result()
    again = EpochLog(live, result, Checkpoints(tmp_path / "ckpt", "key"))
    again.replay(again.ckpt.history("scratch"))
    again.epoch("scratch", {"loss": 1.0, "val_accuracy": 0.7}, images=40, seconds=2.0)
    assert [h["loss"] for h in result.history] == [1.5, 1.2, 1.0] and [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.images_seen == 40 and result.train_seconds == 2.0  # only the new epoch was trained here
    assert [(s, v) for s, n, v in live.rows if n == "loss"] == [(0, 1.5), (1, 1.2), (2, 1.0)]
    assert result.best_val_accuracy == 0.7


def test_training_flops_are_counted_from_the_layers():
    from flowerpipe.training.throughput import training_flops

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.SeparableConv2D(6, 3, padding="same", use_bias=False, name="sep")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="head")(x))
    conv, sep, head = 2 * 64 * 3 * 3 * 3 * 4, 2 * 64 * (3 * 3 * 4 + 4 * 6), 2 * 6 * 5
    assert training_flops(model) == {"forward": conv + sep + head, "train_step": 3 * (conv + sep + head)}
    model.get_layer("conv").trainable = False  # frozen: its forward pass only
    assert training_flops(model)["train_step"] == conv + 3 * (sep + head)


def test_scratch_crops_are_reproducible_and_mixes_keep_one_unit_of_label_per_image(tiny_records):
    from flowerpipe.params import Train
    from flowerpipe.training.loops import _datasets, mixer

    _prepare(tiny_records, "default")
    folder = tiny_records / "data" / "tfrecords"

    def first(crop_area: float, seed: int = 3) -> np.ndarray:
        ds, _ = _datasets(folder, 71, 4, Train(seed=seed, scratch_crop_area=crop_area), True, 5, scratch=True)
        return np.stack([x.numpy() for x, _ in ds.take(3)])

    cropped = first(0.25)
    assert cropped.shape == (3, 4, 71, 71, 3) and np.array_equal(cropped, first(0.25))  # same seed, same crops
    assert not np.array_equal(cropped, first(1.0))  # the same photos in the same order, cropped
    assert not np.array_equal(cropped, first(0.25, seed=4))  # another seed, other batches
    x = np.stack([np.full((71, 71, 3), 50.0 * i, np.float32) for i in range(4)])
    y = np.eye(5, dtype=np.float32)[[0, 1, 2, 3]]
    for mixup, cutmix in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
        mixed_x, mixed_y = (t.numpy() for t in mixer(0, mixup, cutmix)(x, y))
        assert mixed_x.shape == x.shape and np.allclose(mixed_y.sum(1), 1.0)  # one unit of label per image
        assert mixed_y.max() < 1.0 or not np.array_equal(mixed_x, x)  # something was mixed


def test_training_input_decodes_once_and_never_upsamples_a_crop_past_its_cap(tiny_records):
    import tensorflow as tf

    from flowerpipe.data import tfrecord
    from flowerpipe.training.input import Augment, build_cache, cache_side, crop_boxes, train_dataset

    _prepare(tiny_records, "default")
    folder = tiny_records / "data" / "tfrecords"
    # decoded once, as evaluation decodes (rounded to uint8); augment off: each photo once an epoch, as it is
    x, y = tfrecord.arrays(folder, "train", 71)
    cache = build_cache(folder, "train", 71)
    assert cache.images.shape == (len(y), 71, 71, 3) and cache.images.dtype == np.uint8
    assert np.array_equal(cache.labels, y) and np.abs(cache.images - x).max() <= 0.5 + 1e-3
    assert (cache.sizes >= 64).all() and (cache.sizes < 88).all()  # each photo's own size (make_photos: 64-87 px)
    epoch = np.concatenate([b.numpy() for b, _ in train_dataset(cache, Augment(71, zoom=False, flip=False), 4, 0)
                            .take(len(y) // 4)])
    assert sorted(map(bytes, epoch.astype(np.uint8))) == sorted(map(bytes, cache.images))
    assert cache_side(128, 0.25) == 256 and cache_side(128, 0.05) == 256 and cache_side(128, 1.0) == 128
    # crops: at least crop_area of the photo, inside it, and no side upsampled past max_upsample (then milder)
    sizes = tf.constant([[32, 32], [71, 71], [300, 400], [1000, 1000]] * 256)
    bw, bh, cx, cy = (t.numpy() for t in crop_boxes(Augment(71, crop_area=0.25, max_upsample=1.5), sizes,
                                                     tf.constant([1, 2], tf.int64)))
    h, w = sizes.numpy().T
    assert (bw * bh >= 0.25 - 1e-6).all() and (cx - bw / 2 >= -1e-6).all() and (cx + bw / 2 <= 1 + 1e-6).all()
    assert (bw * w >= np.minimum(w, 71 / 1.5) - 1e-3).all() and (bh * h >= np.minimum(h, 71 / 1.5) - 1e-3).all()
    assert (bw[0::4] == 1).all() and (bh[0::4] == 1).all()  # a 32 px photo is never cropped: 71 / 1.5 > 32
    assert bw[3::4].min() < 0.6 and bw[1::4].min() >= 1 / 1.5 - 1e-6  # 1000 px: strong crops; 71 px: mild ones


def test_progressive_resizing_trains_the_first_half_smaller_and_saves_a_model_of_the_training_size(tiny_records,
                                                                                                      caplog):
    from flowerpipe.params import Model, Train, load
    from flowerpipe.training.loops import progressive_side
    from flowerpipe.training.run import fit
    from flowerpipe.training.saving import inference_copy
    from flowerpipe.training.throughput import training_flops

    half = Train(scratch_progressive=0.5)
    assert progressive_side(Model(image_size=128, weights="none"), Train(scratch_progressive=0.75), "scratch") == 96
    assert progressive_side(Model(image_size=128, weights="none", arch="inception_v3"), half, "scratch") == 80
    assert progressive_side(Model(image_size=71, weights="none"), half, "scratch") is None  # Xception's least: 71
    assert progressive_side(Model(image_size=128, weights="none"), half, "fine_tune") is None
    assert progressive_side(Model(image_size=128, weights="none"), half, "scratch", multi_worker=True) is None

    _prepare(tiny_records, "default")
    folder = tiny_records / "data" / "tfrecords"
    p = load(tiny_records / "params.yaml")
    m = p.model.model_copy(update={"image_size": 96})
    train = p.train.model_copy(update={"scratch_progressive": 0.75, "scratch_minutes": 0.0, "scratch_epochs": 2,
                                       "scratch_ema": 0.9})
    with caplog.at_level("INFO"):
        model, result, _ = fit(folder, m, train, tiny_records / "ckpt", FakeLive())
    assert model.input_shape == (None, None, None, 3) and result.epochs_run == 2
    assert "train.scratch_progressive=0.75: 1 epochs at 72 px, then 96 px" in caplog.text
    small, full = (training_flops(model, size)["train_step"] for size in (72, 96))
    assert small < full * 0.7 and result.flops == result.images_seen // 2 * (small + full)  # epoch 1 small, 2 full
    saved = inference_copy(model, 96)
    assert saved.input_shape == (None, 96, 96, 3)
    assert all(np.array_equal(a, b) for a, b in zip(saved.get_weights(), model.get_weights(), strict=True))

    clocked = train.model_copy(update={"scratch_minutes": 0.05, "scratch_epochs": 50, "scratch_ema": 0.0})
    caplog.clear()
    with caplog.at_level("INFO"):
        fit(folder, m, clocked, tiny_records / "ckpt2", FakeLive())
    assert "epochs at 72 px, then 96 px" in caplog.text  # half the 3 s budget at 72 px, by the clock


def test_flip_averaged_accuracy_averages_each_photo_with_its_mirror_image(tiny_records):
    import tensorflow as tf

    from flowerpipe.data import tfrecord
    from flowerpipe.training.saving import accuracy_on

    _prepare(tiny_records, "default")
    folder = tiny_records / "data" / "tfrecords"
    seen = []

    def model(x, training=False):
        """Uniform for a photo (argmax 0), class 2 for anything else: its mirror image when flip is on."""
        seen.append(x.numpy())
        n = x.shape[0]
        if len(seen) % 2 == 1:
            return tf.fill([n, 5], 0.2)
        return tf.one_hot(tf.fill([n], 2), 5)

    _, y = tfrecord.arrays(folder, "val", 71)
    assert accuracy_on(model, folder, "val", 71, 64, flip=True) == pytest.approx(float(np.mean(y == 2)))
    assert len(seen) == 2 and np.array_equal(seen[1], seen[0][:, :, ::-1, :])  # mirrored left to right
    assert accuracy_on(lambda x, training=False: tf.fill([x.shape[0], 5], 0.2), folder, "val", 71, 64) == \
        pytest.approx(float(np.mean(y == 0)))
