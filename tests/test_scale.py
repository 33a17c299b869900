"""Training beyond one machine: Ray Train's TensorflowTrainer on a real local Ray; the Kubeflow Trainer v2 manifest."""

import json
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, call_stage, git_project, make_photos, sh

from flowerpipe.errors import UserError
from flowerpipe.model import load_model
from flowerpipe.training.strategy import choose_strategy


def _processes_with(token: str) -> list[int]:
    """Pids of the processes whose environment holds token (a run's processes and everything they started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if token.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return pids


def _wait_gone(token: str, seconds: float = 60) -> list[int]:
    """Poll until no process carries token (Ray's processes exit after the driver's ray.shutdown); the rest."""
    deadline = time.monotonic() + seconds
    while (left := _processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_ray_is_not_a_strategy_inside_one_process():
    with pytest.raises(UserError, match="Ray Train"):
        choose_strategy("ray", 0, 0)


@pytest.mark.slow
def test_ray_train_two_workers_on_a_local_ray_save_identical_models(tmp_path):
    """`dvc repro train` with train.strategy ray: a real Ray on this machine, Ray Train's TensorflowTrainer with two
    workers, each running flowerpipe's multi-worker loop from the TF_CONFIG Ray wrote; both saved models agree."""
    photos = make_photos(tmp_path / "photos", per_class=6)
    train = {**TINY["train"], "strategy": "ray", "ray_workers": 2, "batch_size": 4, "max_steps_per_epoch": 2,
             "scratch_epochs": 4, "scratch_minutes": 60, "deterministic": False}
    repo, env = git_project(tmp_path / "repo", {**TINY, "data": {"url": str(photos)}, "train": train})
    for name in ("download", "tfrecords"):
        call_stage(name, repo)
    sh(["dvc", "commit", "--force", "--with-deps", "tfrecords"], repo, env)
    token = f"FLOWERPIPE_TEST_RUN={uuid.uuid4().hex}"
    ray_tmp = tempfile.mkdtemp(prefix="fpray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    run_env = {**env, "RAY_TMPDIR": ray_tmp, token.split("=")[0]: token.split("=")[1]}
    run_env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    try:
        proc = subprocess.run(["dvc", "repro", "train"], cwd=repo, env=run_env, capture_output=True, text=True,
                              timeout=900)
        wall = time.perf_counter() - started
        print(f"dvc repro train on 2 Ray workers: {wall:.1f} s wall")
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    finally:
        left = _wait_gone(token)
        for pid in left:  # only processes this run started carry the token
            os.kill(pid, 9)
        subprocess.run(["rm", "-rf", ray_tmp], check=False)
    assert not left, f"Ray processes left running after the stage: {left}"
    worker1 = repo / "models" / "train" / "workers" / "1"
    records = [json.loads(p.read_text()) for p in (repo / "reports" / "train.json", worker1 / "reports" / "train.json")]
    for r in records:
        assert (r["replicas"], r["strategy"], r["epochs_run"], r["budget_epochs"]) == (2, "multi_worker", 4, 4)
        losses = [h["loss"] for h in r["history"]]
        assert losses[-1] < losses[0], losses
    assert records[0]["history"][-1]["loss"] == records[1]["history"][-1]["loss"]  # one all-reduced run
    models = [load_model(p).get_weights() for p in (repo / "models" / "model.keras", worker1 / "model.keras")]
    assert len(models[0]) > 50
    assert all(np.array_equal(a, b) for a, b in zip(*models, strict=True)), "the workers saved different weights"
    assert not (repo / "models" / "train" / "ray").exists()  # Ray Train's run records, removed after success
    assert "up to date" in sh(["dvc", "status", "train"], repo, env)
