"""The whole DAG with real dvc on a tiny generated dataset, then an experiment and a queued sweep."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY, make_photos, write_params

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def sh(cmd: list[str], cwd: Path, env: dict, timeout: int = 1500) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh git + dvc checkout of the tracked project files, with tiny params, after one `dvc repro`."""
    work = tmp_path_factory.mktemp("e2e")
    repo = work / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("metrics/", "plots/", "reports/", "dvc.lock")):
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    photos = make_photos(work / "photos", per_class=8)
    write_params(repo, {**TINY, "data": {"url": str(photos)}})
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@localhost", "GIT_COMMITTER_NAME": "e2e",
           "GIT_COMMITTER_EMAIL": "e2e@localhost"}
    sh(["git", "init", "-q", "-b", "main"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "tiny project"], repo, env)
    sh(["dvc", "repro"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "baseline run"], repo, env)
    return repo, env


def test_repro_writes_every_metric_and_report(project):
    repo, env = project
    evaluate = json.loads((repo / "metrics" / "evaluate.json").read_text())["formats"]
    assert evaluate["keras"]["status"] == "ok" and evaluate["onnx"]["top1_agreement"] == 1.0
    assert evaluate["tensorrt-fp32"]["status"] == "skipped"
    bench = json.loads((repo / "metrics" / "benchmark.json").read_text())
    assert bench["results"]["onnx"]["cpu"]["b1"]["status"] == "ok"
    assert bench["results"]["tensorrt-int8"]["gpu"]["b1"]["status"] == "skipped"
    assert (repo / "reports" / "summary" / "report.md").read_text().startswith("# flowerpipe run report")
    assert (repo / "reports" / "predictions.csv").exists()
    t = time.perf_counter()
    out = sh(["dvc", "repro"], repo, env)
    assert "didn't change" in out or "up to date" in out
    assert time.perf_counter() - t < 30


def test_exp_run_then_metrics_diff(project):
    repo, env = project
    sh(["dvc", "exp", "run", "-S", "train.scratch_epochs=2"], repo, env)
    diff = json.loads(sh(["dvc", "metrics", "diff", "--json"], repo, env))
    train = diff["metrics/train.json"]
    assert train["epochs_run"]["old"] == 1 and train["epochs_run"]["new"] == 2
    sh(["git", "checkout", "--", "."], repo, env)
    sh(["dvc", "checkout", "--force"], repo, env)


def test_queued_sweep_and_plots(project):
    repo, env = project
    for sizes in ("[1]", "[1,3]"):
        sh(["dvc", "exp", "run", "--queue", "-S", f"benchmark.batch_sizes={sizes}"], repo, env)
    sh(["dvc", "queue", "start", "-j", "1"], repo, env)
    deadline = time.time() + 1200
    while time.time() < deadline:
        status = sh(["dvc", "queue", "status"], repo, env)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert "Failed" not in status, sh(["dvc", "queue", "logs", status.split()[-1]], repo, env) if status else status
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo, env))
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    done = []
    for exp in exps:
        for run in exp.get("revs", []):
            data = run.get("data", {})
            params = data.get("params", {}).get("params.yaml", {}).get("data", {})
            sizes = params.get("benchmark", {}).get("batch_sizes")
            metrics = data.get("metrics", {})
            if sizes in ([1], [1, 3]) and "metrics/benchmark.json" in metrics:
                cells = metrics["metrics/benchmark.json"]["data"]["results"]["onnx"]["cpu"]
                assert sorted(cells) == [f"b{n}" for n in sizes] and cells["b1"]["status"] == "ok"
                assert metrics["metrics/serve.json"]["data"]["load"]["c1"]["errors"] == 0
                done.append(len(sizes))
    assert sorted(done) == [1, 2], json.dumps(shown)[:3000]
    names = sh(["dvc", "exp", "ls", "--name-only"], repo, env).split()
    diff = json.loads(sh(["dvc", "metrics", "diff", "--json", "HEAD", names[0]], repo, env))
    assert "metrics/benchmark.json" in diff
    sh(["dvc", "plots", "show", "-o", "plots_html"], repo, env)
    page = (repo / "plots_html" / "index.html").read_text()
    assert "Accuracy by epoch" in page and "Confusion matrix" in page
