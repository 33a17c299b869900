import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, TINY, call_stage, make_photos, run_stage, write_params

from flowerpipe.errors import UserError
from flowerpipe.loadtest import free_port
from flowerpipe.train import choose_strategy, use_mixed_precision


@pytest.mark.parametrize("name, gpus, workers, expected", [
    ("auto", 0, 0, "default"), ("auto", 1, 0, "default"), ("auto", 4, 0, "mirrored"),
    ("auto", 0, 2, "multi_worker"), ("mirrored", 0, 0, "mirrored"), ("default", 8, 0, "default"),
])
def test_strategy_choice(name, gpus, workers, expected):
    assert choose_strategy(name, gpus, workers) == expected


def test_multi_worker_needs_tf_config():
    with pytest.raises(UserError, match="TF_CONFIG"):
        choose_strategy("multi_worker", 0, 0)


def test_mixed_precision_choice():
    assert use_mixed_precision("auto", 1) and not use_mixed_precision("auto", 0)
    assert use_mixed_precision("on", 0) and not use_mixed_precision("off", 2)


@pytest.mark.slow
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
    code = textwrap.dedent(f"""
        import numpy as np
        from flowerpipe.data.tfrecord import arrays
        from flowerpipe.model import load_model
        x, _ = arrays({str(trained / 'data/tfrecords')!r}, 'test', 71)
        a = load_model({str(trained / 'models/model.keras')!r}).predict(x, verbose=0)
        b = load_model({str(trained / 'models/model.keras')!r})(x, training=False).numpy()
        np.save({str(trained / 'reload.npy')!r}, np.stack([a, b]))
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    a, b = np.load(trained / "reload.npy")
    assert np.allclose(a, b, atol=1e-5) and np.allclose(a.sum(1), 1, atol=1e-4)


def test_checkpoints_of_other_params_or_data_are_dropped(tmp_path):
    from flowerpipe.train import Checkpoints

    ckpt = Checkpoints(tmp_path / "ckpt", "key-a")
    ckpt.record("scratch", {"epoch": 1, "phase": "scratch", "loss": 1.0})
    assert Checkpoints(tmp_path / "ckpt", "key-a").history("scratch") == [{"epoch": 1, "phase": "scratch", "loss": 1.0}]
    fresh = Checkpoints(tmp_path / "ckpt", "key-b")
    assert fresh.history("scratch") == [] and fresh.done("scratch") is None
    assert not (tmp_path / "ckpt" / "state.json").exists()  # the other run's state was removed with its folder


@pytest.mark.slow
def test_phase_resume_logs_the_restored_epochs(tmp_path):
    """A finished phase is not trained again after an interruption, and its epochs are logged again."""
    make_photos(tmp_path / "photos", per_class=6)
    write_params(tmp_path, {**TINY, "data": {"url": str(tmp_path / "photos")}})
    call_stage("download", tmp_path)
    call_stage("tfrecords", tmp_path)
    code = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from flowerpipe.params import load
        from dvclive import Live
        from flowerpipe.train import fit
        p = load("params.yaml")
        with Live("live", dvcyaml=None, save_dvc_exp=False) as live:
            _, r, _ = fit(Path(p.paths.tfrecords), p.model, p.train, Path("ckpt"), live)
        print(json.dumps({"resumed": r.resumed_from, "epochs": r.epochs_run}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run():
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    assert run() == {"resumed": "", "epochs": 1}
    assert run() == {"resumed": "scratch", "epochs": 1}  # same params: the finished phase is restored, not rerun
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
    from flowerpipe.train import fit
    p = load("params.yaml")
    with Live(f"live-{sys.argv[2]}", dvcyaml=None, save_dvc_exp=False) as live:
        model, r, _ = fit(Path(p.paths.tfrecords), p.model, p.train, Path(sys.argv[2]), live)
    print(json.dumps({"replicas": r.replicas, "strategy": r.strategy, "epochs": r.epochs_run}))
""")


@pytest.fixture
def tiny_records(tmp_path):
    make_photos(tmp_path / "photos", per_class=6)
    return tmp_path


def _prepare(folder: Path, strategy: str) -> None:
    write_params(folder, {**TINY, "data": {"url": str(folder / "photos")},
                          "train": {**TINY["train"], "strategy": strategy, "batch_size": 4, "max_steps_per_epoch": 2,
                                    "deterministic": False}})
    call_stage("download", folder)
    call_stage("tfrecords", folder)


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tiny_records):
    _prepare(tiny_records, "mirrored")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", FIT_SCRIPT, "logical", "ckpt"], cwd=tiny_records, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"replicas": 2, "strategy": "mirrored", "epochs": 1}


@pytest.mark.slow
def test_pretrained_weights_file_cached_head_then_fine_tune(tmp_path):
    """The default transfer path, with a weights file standing in for ImageNet: cached-feature head, then fine-tune."""
    make_photos(tmp_path / "photos", per_class=6)
    weights = tmp_path / "backbone.weights.h5"
    code = ("import keras; keras.applications.Xception(include_top=False, weights=None, input_shape=(71, 71, 3), "
            f"pooling='avg').save_weights({str(weights)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    write_params(tmp_path, {**TINY, "data": {"url": str(tmp_path / "photos")},
                            "model": {"image_size": 71, "weights": str(weights)},
                            "train": {**TINY["train"], "epochs": 2, "fine_tune_epochs": 1, "fine_tune_layers": 10}})
    call_stage("download", tmp_path)
    call_stage("tfrecords", tmp_path)
    run_stage("train", tmp_path)
    record = json.loads((tmp_path / "reports" / "train.json").read_text())
    assert [h["phase"] for h in record["history"]] == ["head", "head", "fine_tune"]
    write_params(tmp_path, {"model": {"image_size": 71, "weights": str(tmp_path / "nope.h5")}})
    proc = run_stage("train", tmp_path, check=False)
    assert proc.returncode == 1 and "nope.h5" in proc.stderr and "does not exist" in proc.stderr


@pytest.mark.slow
def test_multi_worker_two_local_workers(tiny_records):
    """Two MultiWorkerMirroredStrategy workers on loopback ports train one short epoch together."""
    _prepare(tiny_records, "multi_worker")
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    procs = []
    for i in range(2):
        env = {**os.environ, "PYTHONPATH": str(ROOT),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen([sys.executable, "-c", FIT_SCRIPT, "plain", f"ckpt{i}"], cwd=tiny_records,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results == [{"replicas": 2, "strategy": "multi_worker", "epochs": 1}] * 2


def test_inference_copy_of_a_mixed_precision_model_computes_in_float32():
    """from_config alone keeps mixed_float16 on every layer; the exported copy must compute in float32."""
    import keras

    from flowerpipe.train import inference_copy

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = keras.Input((4,))
        x = keras.layers.BatchNormalization()(keras.layers.Dense(3)(inp))
        model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", dtype="float32")(x))
        assert {layer.dtype_policy.name for layer in model.layers[1:3]} == {"mixed_float16"}
        copy = inference_copy(model)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    assert copy(x).dtype == "float32"
    assert np.allclose(copy(x), model(x), atol=2e-2)  # same weights; float16 compute differs only slightly
