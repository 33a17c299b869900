"""A sweep across nodes: each node is a clone that runs one `dvc exp run -S ...` and `dvc exp push`es it to a
shared Git remote and DVC remote; another clone pulls both experiments and `dvc exp show` lists them."""

import csv
import io
import json
import subprocess
import sys

import pytest
import yaml
from conftest import TINY, git_project, make_photos, sh

from flowerpipe.errors import UserError
from flowerpipe.scale import sweep

SWEEP = {"name": "split", "targets": ["tfrecords"], "runs": [{"split.val": 0.2}, {"split.val": 0.4}]}


def test_a_sweep_file_is_runs_or_a_grid_in_a_fixed_order(tmp_path):
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump({"name": "lr", "grid": {"train.scratch_learning_rate": [0.001, 0.002],
                                                        "train.augment": [True, False]}}, sort_keys=False))
    runs, targets = sweep.load(f)
    assert [r.name for r in runs] == ["lr-0", "lr-1", "lr-2", "lr-3"] and targets == []
    assert runs[1].set_args() == ["-S", "train.scratch_learning_rate=0.001", "-S", "train.augment=false"]
    assert sweep.commands(runs[3], ["train"], "origin") == [
        ["dvc", "exp", "run", "train", "-n", "lr-3", "-S", "train.scratch_learning_rate=0.002", "-S",
         "train.augment=false"], ["dvc", "exp", "push", "origin", "lr-3"]]
    assert sweep.main([str(f), "--count"]) == 0
    for bad, message in [({"grid": {"a": [1]}}, "needs a name"), ({"name": "x"}, "either grid"),
                         ({"name": "x", "grid": {"a": []}}, "non-empty list"), ({"name": "x", "runs": [1]}, "runs:")]:
        f.write_text(yaml.safe_dump(bad))
        with pytest.raises(UserError, match=message):
            sweep.load(f)


def test_an_index_outside_the_sweep_is_one_line(tmp_path, capsys):
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(SWEEP))
    assert sweep.main([str(f), "--index", "2"]) == 1
    assert capsys.readouterr().err == f"error: {f}: index 2 is outside its 2 runs (0..1)\n"


@pytest.mark.slow
def test_two_nodes_run_one_experiment_each_and_a_third_clone_shows_both(tmp_path):
    photos = make_photos(tmp_path / "photos", per_class=4)
    seed, env = git_project(tmp_path / "seed", {**TINY, "data": {"url": str(photos)}})
    origin = tmp_path / "origin.git"  # the shared Git remote
    sh(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path, env)
    sh(["dvc", "remote", "add", "-d", "store", str(tmp_path / "dvc-store")], seed, env)  # the shared DVC remote
    (seed / "sweep.yaml").write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    sh(["git", "add", ".dvc/config", "sweep.yaml"], seed, env)
    sh(["git", "commit", "-qm", "a sweep and the shared remotes"], seed, env)
    sh(["git", "remote", "add", "origin", str(origin)], seed, env)
    sh(["git", "push", "-q", "origin", "main"], seed, env)

    nodes = []
    for i in range(2):  # two machines: a clone each, both at once, JOB_COMPLETION_INDEX as an Indexed Job sets it
        node = tmp_path / f"node{i}"
        sh(["git", "clone", "-q", str(origin), str(node)], tmp_path, env)
        nodes.append(subprocess.Popen([sys.executable, "-m", "flowerpipe.scale.sweep", "sweep.yaml"], cwd=node,
                                      env={**env, "JOB_COMPLETION_INDEX": str(i)}, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for proc in nodes:
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-4000:]

    viewer = tmp_path / "viewer"
    sh(["git", "clone", "-q", str(origin), str(viewer)], tmp_path, env)
    assert sorted(sh(["dvc", "exp", "list", "--name-only", "origin"], viewer, env).split()) == ["split-0", "split-1"]
    print(sh(["dvc", "exp", "pull", "origin"], viewer, env).strip())
    shown = sh(["dvc", "exp", "show", "--no-pager", "--only-changed"], viewer, {**env, "COLUMNS": "120"})
    print(shown)
    assert "[split-0]" in shown and "[split-1]" in shown, shown
    rows = {r["Experiment"]: r for r in csv.DictReader(io.StringIO(sh(["dvc", "exp", "show", "--csv"], viewer, env)))}
    assert {name: float(rows[name]["split.val"]) for name in ("split-0", "split-1")} == {"split-0": 0.2,
                                                                                         "split-1": 0.4}
    # the experiments' outputs came through the DVC remote: on a branch of one, its data checks out from the cache
    sh(["dvc", "exp", "branch", "split-1", "from-node1"], viewer, env)
    sh(["git", "checkout", "-q", "from-node1"], viewer, env)
    sh(["dvc", "checkout", "--with-deps", "tfrecords"], viewer, env)
    manifest = json.loads((viewer / "data" / "tfrecords" / "manifest.json").read_text())
    assert manifest["split_params"]["val"] == 0.4
    assert manifest["splits"]["val"]["count"] > manifest["splits"]["test"]["count"], manifest["splits"]
    assert "up to date" in sh(["dvc", "status", "tfrecords"], viewer, env)
