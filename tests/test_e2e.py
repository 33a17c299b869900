"""The experiment loop with real DVC on the shared tiny project: exp run, metrics diff, queue, plots, remote."""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import HAS_GPU, sh

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

MAX_HEADLINE = 29


def metric_values(tree) -> list:
    """Every leaf of a metrics tree."""
    if isinstance(tree, dict):
        return [v for x in tree.values() for v in metric_values(x)]
    return [tree]


def exp_rows(shown: list) -> list[dict]:
    """Each row of `dvc exp show --json` (workspace, baseline and every experiment) as one dict of rev data."""
    rows = []
    for rev in shown:
        rows.append({"name": rev.get("name") or rev["rev"], **rev.get("data", {})})
        for exp in rev.get("experiments") or []:
            for run in exp.get("revs", []):
                rows.append({"name": run.get("name") or run["rev"], **run.get("data", {})})
    return rows


def ran_stages(log: str) -> set[str]:
    """The stages a dvc run actually ran (not skipped), from its output."""
    return set(re.findall(r"Running stage '([^']+)'", log))


def set_params(repo: Path, **changes) -> None:
    """Edit params.yaml in place: set_params(repo, **{"serve.concurrency": [1, 3]})."""
    p = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in changes.items():
        section, name = key.split(".")
        p[section][name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def test_repro_writes_every_output_and_a_second_repro_is_a_noop(project):
    repo, env = project
    detail = json.loads((repo / "reports" / "evaluate.json").read_text())["formats"]
    assert detail["keras"]["status"] == "ok" and detail["onnx"]["top1_agreement"] == 1.0
    assert detail["tensorrt-fp32"]["status"] == ("ok" if HAS_GPU else "skipped")
    bench = json.loads((repo / "reports" / "benchmark.json").read_text())
    assert bench["results"]["onnx"]["cpu"]["b1"]["status"] == "ok"
    assert bench["results"]["tensorrt-fp16"]["gpu"]["b1"]["status"] == ("ok" if HAS_GPU else "skipped")
    report = (repo / "reports" / "summary" / "report.md").read_text()
    assert report.startswith("# flowerpipe run report") and "| images_per_second " in report  # one field a line
    # the first screen says what to ship, the same decision as the record and the headline numbers
    assert report.split("\n## ")[1].startswith("What to ship") and "lowest latency" in report
    decision = json.loads((repo / "reports" / "recommend.json").read_text())
    shipped = decision["devices"]["cpu"]["latency"]
    assert decision["formats"][shipped["format"]]["status"] == "ok"
    assert json.loads((repo / "metrics" / "deploy.json").read_text())["ship_b1_ms"] == round(shipped["ms"], 2)
    # serve_check served the format again with each batcher setting and kept the best within the budget
    tuning = json.loads((repo / "reports" / "serve.json").read_text())["tuning"]
    assert [(t["max_batch"], t["batch_window_ms"]) for t in tuning["settings"]] == [(4, 2)]  # (one: the suite's time)
    assert all(t[c]["errors"] == 0 and t[c]["mismatches"] == 0 for t in tuning["settings"] for c in ("c1", "c2"))
    assert set(tuning["best"]) == {"c1", "c2"}
    assert " nan " not in report  # a skipped format: blank cells
    skipped = report.split("## Benchmark cells skipped here", 1)[-1]  # TensorRT's CPU cells, on every machine
    assert "| tensorrt-fp16 | cpu " in skipped and "GPU" in skipped.split("| tensorrt-fp16 | cpu ", 1)[1].split("\n")[0]
    assert (repo / "reports" / "predictions.csv").exists()
    # the ship stage wrote the served format as a model repository in Triton's layout, with the decision in it
    served = json.loads((repo / "reports" / "serve.json").read_text())["format"]
    model = repo / "models" / "ship" / "repository" / "flowers"
    manifest = json.loads((model / "flowerpipe.json").read_text())
    assert manifest["format"] == served and (model / "1").is_dir() and (model / "labels.txt").exists()
    if manifest["family"] in ("onnx", "openvino"):
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        config = text_format.Parse((model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.max_batch_size == tuning["best"]["c2"].get("max_batch", config.max_batch_size)
    isvc = yaml.safe_load((repo / "models" / "ship" / "kserve" / "inferenceservice.yaml").read_text())
    assert isvc["spec"]["predictor"].get("scaleMetric", "concurrency") == "concurrency"
    out = sh(["dvc", "repro"], repo, env)
    assert "didn't change" in out or "up to date" in out
    assert "Running stage" not in out  # a no-op: nothing reran (what it costs is a measurement, not a test)
    assert "up to date" in sh(["dvc", "status"], repo, env)  # __pycache__ written by the run is not a change


def test_each_param_reruns_only_the_stages_that_read_it(project):
    """dvc status after one param edit names exactly the stages that declare it (and renaming never retrains)."""
    repo, env = project
    cases = {
        "serve.concurrency": ([1, 3], {"serve_check"}),
        "benchmark.batch_sizes": ([1, 4], {"benchmark"}),
        "headline.formats": (["onnx"], {"evaluate", "benchmark"}),
        "model.name": ("roses", {"export", "evaluate", "benchmark", "infer", "serve_check", "ship"}),
        "ship.max_replicas": (8, {"ship"}),
        "tensorrt.max_batch_size": (8, {"convert_tensorrt"}),
        "train.patience": (2, {"train"}),
        "train.learning_rate": (0.002, {"train"}),  # a head-only change: the features stage's output is reused
        "model.dropout": (0.3, {"train"}),
        "train.cache_features": (False, {"features", "train"}),
        "deploy.latency_budget_ms": (50, {"serve_check", "report"}),  # a new decision and batcher choice
        "deploy.min_accuracy_ratio": (0.95, {"serve_check", "report"}),  # what serve.format auto may serve, too
        "serve.min_agreement": (0.9, {"serve_check", "report"}),
    }
    try:
        for key, (value, stages) in cases.items():
            set_params(repo, **{key: value})
            changed = set(json.loads(sh(["dvc", "status", "--json"], repo, env)))
            assert changed == stages, (key, changed)
            sh(["git", "checkout", "--", "params.yaml"], repo, env)
    finally:
        sh(["git", "checkout", "--", "params.yaml"], repo, env)


def test_two_experiments_compare_on_a_few_numeric_headline_metrics(project):
    repo, env = project
    log = sh(["dvc", "exp", "run", "-n", "conc3", "-S", "serve.concurrency=[1,3]"], repo, env)
    assert ran_stages(log) == {"serve_check", "report", "ship"}, log[-3000:]
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo, env))
    rows = {r["name"]: r for r in exp_rows(shown) if r.get("metrics")}
    assert "conc3" in rows and len(rows) >= 2
    for name, row in rows.items():
        values = [v for f in row["metrics"].values() for v in metric_values(f.get("data", {}))]
        assert 10 <= len(values) <= MAX_HEADLINE, (name, len(values), row["metrics"].keys())
        assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in values), (name, values)
        assert "test_accuracy" in row["metrics"]["metrics/evaluate.json"]["data"]
        assert row["metrics"]["metrics/benchmark.json"]["data"]["savedmodel"]["b1_ms"] > 0
    diff = json.loads(sh(["dvc", "metrics", "diff", "--json", "--all", "HEAD", "conc3"], repo, env))
    rows = [(f, k) for f, d in diff.items() for k in d]
    assert 10 <= len(rows) <= MAX_HEADLINE and ("metrics/serve.json", "serve_p99_ms") in rows
    assert ("metrics/evaluate.json", "test_accuracy") in rows and ("dvclive/metrics.json", "model_val_accuracy") in rows
    sh(["dvc", "exp", "apply", "conc3"], repo, env)  # the winner back in the workspace, with nothing stale
    assert "up to date" in sh(["dvc", "status"], repo, env)
    sh(["git", "checkout", "--", "."], repo, env)
    sh(["dvc", "checkout", "--force"], repo, env)


def test_queued_sweep_runs_its_own_code_and_only_its_stages(project):
    """A queued grid sweep runs the library code it was queued with, not the workspace's, and only its stages.

    The sweep is over a param that re-times nothing (infer.top_k): which stages a timing param reruns is
    checked by dvc status above, without paying for the timing.
    """
    repo, env = project
    infer_py = repo / "flowerpipe" / "predict.py"
    original = infer_py.read_text()
    infer_py.write_text(original.replace('row[f"top{i}_class"]', 'row[f"top{i}_class_queued"]'))
    assert infer_py.read_text() != original
    sh(["dvc", "exp", "run", "--queue", "-S", "infer.top_k=1,2"], repo, env)  # a grid: two experiments
    infer_py.write_text(original)  # the workspace goes back to the committed code before the queue runs
    sh(["dvc", "queue", "start"], repo, env)
    deadline = time.time() + 1200
    while time.time() < deadline:
        status = sh(["dvc", "queue", "status"], repo, env)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    rows = {r["name"]: r for r in exp_rows(json.loads(sh(["dvc", "exp", "show", "--json"], repo, env)))}
    names = [n for n in rows if n != "workspace" and "params" in rows[n]]
    assert "Failed" not in status, status + "\n".join(sh(["dvc", "queue", "logs", n], repo, env)[-3000:] for n in names)
    swept = {rows[n]["params"]["params.yaml"]["data"]["infer"]["top_k"]: n for n in names
             if rows[n]["params"]["params.yaml"]["data"]["infer"]["top_k"] != 3}
    assert sorted(swept) == [1, 2], rows.keys()
    for top_k, name in swept.items():
        assert ran_stages(sh(["dvc", "queue", "logs", name], repo, env)) == {"infer"}
        predictions = sh(["git", "show", f"{rows[name]['rev']}:reports/predictions.csv"], repo, env)
        header = predictions.splitlines()[0].split(",")
        assert f"top{top_k}_class_queued" in header and f"top{top_k + 1}_class_queued" not in header, header
    assert "top1_class_queued" not in (repo / "reports" / "predictions.csv").read_text()


def test_plots_name_every_point_and_bar(project):
    repo, env = project
    specs = json.loads(sh(["dvc", "plots", "show", "--json"], repo, env))["data"]
    titles = list(specs)
    for title in ("Accuracy by epoch", "Loss by epoch", "Confusion matrix", "Throughput", "Pareto front"):
        assert any(t.startswith(title) or title in t for t in titles), (title, titles)
    scatter = json.dumps(next(v for t, v in specs.items() if "Pareto front" in t))
    assert '"type": "text"' in scatter and '"field": "format"' in scatter and '"openvino-int8"' in scatter
    # the front drawn over the formats above the floors, and the recommended one ringed (the report's own points)
    assert "datum.pareto == 'front'" in scatter and "datum.recommended == 'yes'" in scatter
    assert '"recommended": "yes"' in scatter
    bars = next(v for t, v in specs.items() if t.startswith("Throughput"))[0]["content"]
    cells = [row["cell"] for row in bars["data"]["values"]]
    assert len(cells) == len(set(cells)) and "onnx b1" in cells and "onnx b2" in cells
    sh(["dvc", "plots", "show", "-o", "plots_html"], repo, env)
    assert "Accuracy by epoch" in (repo / "plots_html" / "index.html").read_text()


def test_share_through_a_dvc_remote_and_git(project, tmp_path):
    """push to a local DVC remote and a bare git origin; a fresh clone pulls data, models and experiments."""
    repo, env = project
    rev = {r["name"]: r["rev"] for r in exp_rows(json.loads(sh(["dvc", "exp", "show", "--json"], repo, env)))}
    names = sh(["dvc", "exp", "ls", "--name-only"], repo, env).split()  # experiments of the current commit
    assert names, "no experiment to share"
    origin = tmp_path / "origin.git"
    sh(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path, env)
    sh(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-store")], repo, env)
    # The experiments were run before this remote existed, so their commits' .dvc/config names none, and DVC reads
    # a revision's own config to push or pull its cache: the untracked local config names it for every revision.
    sh(["dvc", "remote", "add", "--local", "-d", "shared", str(tmp_path / "dvc-store")], repo, env)
    sh(["git", "add", ".dvc/config"], repo, env)
    sh(["git", "commit", "-qm", "DVC remote"], repo, env)
    sh(["git", "remote", "add", "origin", str(origin)], repo, env)
    sh(["git", "push", "-q", "origin", "main"], repo, env)
    sh(["dvc", "push"], repo, env)
    sh(["dvc", "exp", "push", "origin", names[0]], repo, env)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(origin), str(clone)], tmp_path, env)
    sh(["dvc", "pull"], clone, env)
    assert "up to date" in sh(["dvc", "status"], clone, env)
    out = sh(["dvc", "repro"], clone, env)
    assert "didn't change" in out or "up to date" in out
    assert "Running stage" not in out
    assert (clone / "models" / "serving" / "flowers" / "1" / "saved_model.pb").exists()
    sh(["dvc", "remote", "add", "--local", "-d", "shared", str(tmp_path / "dvc-store")], clone, env)  # as above
    sh(["dvc", "exp", "pull", "origin", names[0]], clone, env)
    assert names[0] in sh(["dvc", "exp", "ls", "--all-commits", "--name-only"], clone, env).split()
    sh(["dvc", "exp", "apply", names[0]], clone, env)  # its metrics from git, its outputs from the remote
    sh(["dvc", "pull"], clone, env)
    for f in ("metrics/serve.json", "params.yaml", "reports/serve.json"):
        assert (clone / f).read_text() == sh(["git", "show", f"{rev[names[0]]}:{f}"], repo, env), f
    assert "up to date" in sh(["dvc", "status"], clone, env)  # its data and models came from the remote
    # the TF Serving model as a registered artifact version, fetched without a clone
    sh(["gto", "register", "flowers", "--version", "v1.0.0"], repo, env)
    sh(["git", "push", "-q", "origin", "flowers@v1.0.0"], repo, env)
    sh(["dvc", "artifacts", "get", str(origin), "flowers", "-o", str(tmp_path / "served")], tmp_path, env)
    assert (tmp_path / "served" / "flowers" / "1" / "saved_model.pb").exists()


def test_undeclared_param_read_is_refused(project):
    """A stage that reads a key its dvc.yaml entry does not list stops with one line naming it."""
    repo, env = project
    proc = subprocess.run(["python", "-c", (
        "from pathlib import Path; from flowerpipe.pipeline.stage import stage_params; "
        "p = stage_params('infer', 'params.yaml', Path('dvc.yaml')); print(p.infer.top_k); p.benchmark.threads")],
        cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "3" in proc.stdout
    assert "stage 'infer' reads params.yaml key 'benchmark'" in proc.stderr
