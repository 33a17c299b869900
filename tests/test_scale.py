"""Training beyond one machine: Ray Train's TensorflowTrainer on a real local Ray; the Kubeflow Trainer v2 manifest."""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, TINY, call_stage, git_project, make_photos, sh

from flowerpipe.errors import UserError
from flowerpipe.model.build import load_model
from flowerpipe.scale import sweep
from flowerpipe.scale.tf_config import tf_config
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


def test_a_failed_ray_run_is_one_line_with_the_first_failed_workers_error():
    from ray.train import WorkerGroupError

    from flowerpipe.scale.ray_train import failure

    err = WorkerGroupError("Training failed due to worker errors:", {
        1: RuntimeError("Traceback (most recent call last):\n  File x\nOSError: disk full"),
        0: FileNotFoundError("Traceback ...\nFileNotFoundError: data/tfrecords/manifest.json: dataset manifest "
                             "not found")})
    assert failure(err) == "worker 0: FileNotFoundError: data/tfrecords/manifest.json: dataset manifest not found"
    assert failure(RuntimeError("\nno cluster at ray://x\nmore")) == "no cluster at ray://x"


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
    run_env = {**env, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", token.split("=")[0]: token.split("=")[1]}
    run_env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    seen = 0  # the most processes of this run alive at once: dvc, the stage, Ray's GCS, raylet, workers, ...
    log = tmp_path / "repro.log"
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(["dvc", "repro", "train"], cwd=repo, env=run_env, stdout=out,
                                    stderr=subprocess.STDOUT)
            while proc.poll() is None and time.perf_counter() - started < 900:
                seen = max(seen, len(_processes_with(token)))
                time.sleep(0.5)
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
        wall = time.perf_counter() - started
        print(f"dvc repro train on 2 Ray workers: {wall:.1f} s wall; {seen} processes of the run at most")
        assert proc.returncode == 0, log.read_text()[-6000:]
    finally:
        left = _wait_gone(token)
        for pid in left:  # only processes this run started carry the token
            os.kill(pid, 9)
        subprocess.run(["rm", "-rf", ray_tmp], check=False)
    assert not left, f"Ray processes left running after the stage: {left}"
    assert seen >= 6, seen  # a real Ray: more than dvc, the stage and two workers
    text = log.read_text()
    assert "(RayTrainWorker pid=" in text, text[-3000:]
    assert "State API" not in text  # the placement-group cleaner is left out on a Ray of the run's own
    saved = [line for line in text.splitlines() if "val accuracy of the saved model" in line]
    assert len(saved) == 2, saved  # one line per worker: Ray Train's print patch is off
    # the run's own Ray stays on loopback, and so does the TF_CONFIG Ray Train wrote for the workers
    loopback = r"Ray Train: 2 workers \(TF_CONFIG workers 127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+\)"
    assert re.search(loopback, text), text[-3000:]
    worker1 = repo / "models" / "train" / "workers" / "1"
    records = [json.loads(p.read_text()) for p in (repo / "reports" / "train.json", worker1 / "reports" / "train.json")]
    for r in records:
        assert (r["replicas"], r["strategy"], r["epochs_run"], r["budget_epochs"]) == (2, "multi_worker", 4, 4)
        assert r["launcher"] == "ray" and r["tf_config_workers"] == records[0]["tf_config_workers"]
        losses = [h["loss"] for h in r["history"]]
        assert losses[-1] < losses[0], losses
    assert records[0]["history"][-1]["loss"] == records[1]["history"][-1]["loss"]  # one all-reduced run
    models = [load_model(p).get_weights() for p in (repo / "models" / "model.keras", worker1 / "model.keras")]
    assert len(models[0]) > 50
    assert all(np.array_equal(a, b) for a, b in zip(*models, strict=True)), "the workers saved different weights"
    assert not (repo / "models" / "train" / "ray").exists()  # Ray Train's run records, removed after success
    assert "up to date" in sh(["dvc", "status", "train"], repo, env)


# Field names from kubeflow/trainer's CRDs (manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml and
# _clustertrainingruntimes.yaml, v1alpha1) and JobSet's JobSetSpec.network, as read when this was written.
TRAINJOB_SPEC = {"activeDeadlineSeconds", "initializer", "labels", "annotations", "managedBy", "podTemplateOverrides",
                 "runtimeRef", "suspend", "trainer"}
TRAINJOB_TRAINER = {"args", "command", "env", "image", "numNodes", "numProcPerNode", "resourcesPerNode"}
RUNTIME_REF = {"apiGroup", "kind", "name"}
RUNTIME_SPEC = {"mlPolicy", "podGroupPolicy", "template"}
JOBSET_NETWORK = {"enableDNSHostnames", "subdomain", "publishNotReadyAddresses"}


def _manifests(name: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((ROOT / "deploy" / name).read_text()) if doc}


def _run_tf_config(env: dict, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowerpipe.scale.tf_config", "--", *command], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_kubeflow_trainjob_manifest_gives_every_pod_the_tf_config_of_its_index():
    docs = _manifests("kubeflow-trainjob.yaml")
    runtime, job = docs["ClusterTrainingRuntime"], docs["TrainJob"]
    for doc in (runtime, job):
        assert doc["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert set(job["spec"]) <= TRAINJOB_SPEC and set(job["spec"]["trainer"]) <= TRAINJOB_TRAINER
    ref = job["spec"]["runtimeRef"]
    assert set(ref) <= RUNTIME_REF
    assert (ref["apiGroup"], ref["kind"], ref["name"]) == ("trainer.kubeflow.org", "ClusterTrainingRuntime",
                                                           runtime["metadata"]["name"])
    assert set(runtime["spec"]) <= RUNTIME_SPEC
    assert set(runtime["spec"]["mlPolicy"]) == {"numNodes"}  # a plain runtime: no torch or mpi policy
    jobset = runtime["spec"]["template"]["spec"]
    assert set(jobset["network"]) <= JOBSET_NETWORK and jobset["network"]["enableDNSHostnames"] is True
    (node,) = jobset["replicatedJobs"]
    # Trainer's PlainML plugin sets the pod count from numNodes on the replicated job labelled as the trainer
    # step, and adds the TrainJob's env to its container named "node".
    assert node["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    (container,) = node["template"]["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "node"
    fields = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert fields == {"JOBSET_NAME": "metadata.annotations['jobset.sigs.k8s.io/jobset-name']",
                      "REPLICATED_JOB_NAME": "metadata.annotations['jobset.sigs.k8s.io/replicatedjob-name']"}
    port = next(e["value"] for e in container["env"] if e["name"] == "FLOWERPIPE_TF_PORT")
    assert container["ports"][0]["containerPort"] == int(port)
    trainer = job["spec"]["trainer"]
    nodes = trainer["numNodes"]
    env = {e["name"]: e["value"] for e in trainer["env"] if "value" in e}
    assert int(env["FLOWERPIPE_NUM_NODES"]) == nodes == runtime["spec"]["mlPolicy"]["numNodes"]
    assert trainer["command"] == ["python", "-m", "flowerpipe.scale.tf_config", "--"]
    assert "dvc repro train" in trainer["args"][-1] and "dvc push train" in trainer["args"][-1]

    # What each pod's command does with the environment Kubernetes gives it: the TF_CONFIG of its index.
    name = job["metadata"]["name"]
    hosts = [f"{name}-node-0-{i}.{name}:{port}" for i in range(nodes)]
    pod_env = {"JOBSET_NAME": name, "REPLICATED_JOB_NAME": "node", "FLOWERPIPE_TF_PORT": port, **env}
    code = ("import os; from flowerpipe.training.strategy import tf_config, tf_config_workers; "
            "print(tf_config_workers(), tf_config()['task']['index'], tf_config()['cluster']['worker'])")
    for i in range(nodes):
        proc = _run_tf_config({**pod_env, "JOB_COMPLETION_INDEX": str(i)}, sys.executable, "-c", code)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"{nodes} {i} {hosts}"
    proc = _run_tf_config({**pod_env, "JOB_COMPLETION_INDEX": "0", "JOBSET_NAME": ""}, "true")
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: TF_CONFIG from the pod's index needs JOBSET_NAME (see deploy/kubeflow-trainjob.yaml)")
    with pytest.raises(UserError, match="outside the 2 nodes"):
        tf_config(2, 2, name)


def test_sweep_indexed_job_runs_one_entry_per_index_of_the_example_sweep():
    job = _manifests("sweep-indexed-job.yaml")["Job"]
    assert job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    runs, targets = sweep.load(ROOT / "deploy" / "sweep.example.yaml")
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == len(runs) == 4
    assert targets == ["train"] and [r.name for r in runs] == ["lr-0", "lr-1", "lr-2", "lr-3"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # backoffLimitPerIndex needs it
    (container,) = pod["containers"]
    script = container["args"][-1]
    assert "python -m flowerpipe.scale.sweep sweep.yaml --git-remote origin" in script  # what test_sweep runs
    env = {e["name"] for e in container["env"]}
    assert {"GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"} <= env
