"""dvc.yaml is generated and current, each stage's code deps are exactly what it runs, and a format is one module."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, sh

from flowerpipe.errors import UserError
from flowerpipe.pipeline import dag


def test_dvc_yaml_is_generated_and_current():
    assert (ROOT / "dvc.yaml").read_text() == dag.render(ROOT), "dvc.yaml is out of date: run make dvc.yaml"


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))


def test_the_closure_follows_every_kind_of_import_and_nothing_else(tmp_path):
    _write(tmp_path, {
        "stages/one.py": """
            from flowerpipe import stage

            def main():
                from flowerpipe.pkg.deep import thing  # inside a function, as stage scripts import
                import numpy  # not the project's
            """,
        "flowerpipe/__init__.py": "",
        "flowerpipe/stage.py": "from .helper import x\n",  # relative
        "flowerpipe/helper.py": "__imports__ = ('flowerpipe.spawned',)\nx = 1\n",  # run as a subprocess
        "flowerpipe/spawned.py": "",
        "flowerpipe/pkg/__init__.py": "",
        "flowerpipe/pkg/deep.py": "from flowerpipe.plugins import registry\nthing = 1\n",
        "flowerpipe/plugins/__init__.py": "",
        "flowerpipe/plugins/registry.py": "__discovers__ = 'flowerpipe.plugins'\n",
        "flowerpipe/plugins/a.py": "",
        "flowerpipe/plugins/b.py": "",
        "flowerpipe/unused.py": "",
        "flowerpipe/pkg/unused.py": "",
    })
    files = dag.closure(tmp_path / "stages" / "one.py", tmp_path)
    got = sorted(f.relative_to(tmp_path.resolve()).as_posix() for f in files)
    assert got == ["flowerpipe/__init__.py", "flowerpipe/helper.py", "flowerpipe/pkg/__init__.py",
                   "flowerpipe/pkg/deep.py", "flowerpipe/plugins/__init__.py", "flowerpipe/plugins/a.py",
                   "flowerpipe/plugins/b.py", "flowerpipe/plugins/registry.py", "flowerpipe/spawned.py",
                   "flowerpipe/stage.py", "stages/one.py"]
    # a folder all of whose files are in the closure is one dep; one with a file outside it is listed file by file
    assert dag.collapse(files, tmp_path) == [
        "stages/one.py", "flowerpipe/__init__.py", "flowerpipe/helper.py", "flowerpipe/pkg/__init__.py",
        "flowerpipe/pkg/deep.py", "flowerpipe/plugins", "flowerpipe/spawned.py", "flowerpipe/stage.py"]


def test_params_and_the_formats_import_no_cycle_and_the_first_stages_run_no_format_code():
    code = ("import sys, flowerpipe.params, flowerpipe.pipeline.stage; "
            "print([m for m in sys.modules if m.startswith('flowerpipe.formats')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("download", "tfrecords", "features", "train"):  # a converter's edit never retrains
        assert not [d for d in stages[name]["deps"] if d.startswith("flowerpipe/formats")], name


def test_dvc_yaml_is_made_without_importing_tensorflow():
    code = "import sys; from flowerpipe.pipeline import dag; dag.render(); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_stage_script_without_a_spec_or_with_an_unknown_key_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))  # the formats stay this checkout's
    _write(tmp_path, {"stages/bare.py": "def main(p):\n    pass\n"})
    with pytest.raises(UserError, match=r"^stages/bare.py: no STAGE = stage.Spec\(...\) and no format's FORMAT"):
        dag.declarations(tmp_path)
    _write(tmp_path, {"stages/typo.py": """
        from flowerpipe.pipeline import stage

        STAGE = stage.Spec(order=1, out=["${paths.raw}"])
        """})
    with pytest.raises(UserError, match=r"^stages/typo.py: STAGE: .*unexpected keyword argument 'out'"):
        dag.declared(tmp_path / "stages/typo.py")


def _deps(repo: Path, stage: dict) -> set[str]:
    """A stage's code deps as files (a folder dep: every .py file in it)."""
    out = set()
    for d in stage["deps"]:
        path = repo / d
        if d.endswith(".py"):
            out.add(d)
        elif d.startswith("flowerpipe") and path.is_dir():
            out.update(f.relative_to(repo).as_posix() for f in path.rglob("*.py"))
    return out


def test_every_module_a_stage_ran_is_one_of_its_deps(project):
    """The generated deps against what each stage really imported during the shared project's `dvc repro`."""
    repo, _ = project
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    traces = {f.stem: set(f.read_text().split()) for f in (repo.parent / "imports").glob("*.txt")}
    assert set(traces) == set(stages), "every stage ran once and wrote its trace"
    for name, imported in traces.items():
        assert imported - _deps(repo, stages[name]) == set(), f"{name} ran code its deps do not list"


def _copy(project, tmp_path: Path) -> tuple[Path, dict]:
    repo, env = project
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return copy, env


def _stale(repo: Path, env: dict) -> set[str]:
    """The stages `dvc status` names."""
    return set(json.loads(sh(["dvc", "status", "--json"], repo, env) or "{}"))


@pytest.mark.slow
def test_editing_one_module_makes_exactly_the_stages_that_run_it_stale(project, tmp_path):
    repo, env = _copy(project, tmp_path)
    assert _stale(repo, env) == set()
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    traces = {f.stem: set(f.read_text().split()) for f in (project[0].parent / "imports").glob("*.txt")}
    checked = {
        "flowerpipe/data/images.py": ({"tfrecords", "export", "evaluate"}, {"download"}),  # its decoder is in export
        "flowerpipe/formats/tflite.py": ({"convert_tflite", "evaluate", "benchmark", "serve_check"},
                                         {"train", "export", "convert_onnx"}),
        "flowerpipe/jsonio.py": ({"download", "train", "report"}, set()),  # a helper every stage runs
    }
    for module, (among, never) in checked.items():
        path = repo / module
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit\n")
        try:
            stale = _stale(repo, env)
        finally:
            path.write_bytes(original)
        expected = {name for name, stage in stages.items() if module in _deps(repo, stage)}
        assert stale == expected, module
        assert {name for name, imported in traces.items() if module in imported} <= stale, module
        assert among <= stale and not never & stale, (module, stale)
    assert _stale(repo, env) == set()


# A format nobody ships: the Keras file copied under its own suffix, run by the Keras runtime.
KCOPY = '''
"""kcopy: a byte copy of the trained .keras file under its own suffix, run by the Keras runtime (tests only)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from flowerpipe.formats import keras_format
from flowerpipe.formats.base import Format, Runner, require


def convert(keras_path: Path, out: Path) -> Path:
    """Copy the trained model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(keras_path, out)
    return out


def load(path: Path, option: str = "", device: str = "cpu", threads: int = 0) -> Runner:
    """Keras loads only .keras names: run it from a link of that name."""
    folder = tempfile.mkdtemp(prefix="kcopy-")
    link = Path(folder) / "model.keras"
    link.symlink_to(Path(require(path)).resolve())
    return keras_format.load(link, option, device, threads)


FORMAT = Format(family="kcopy", options=("",), path=lambda p, option: Path(p.paths.converted) / "kcopy" / "model.kcopy",
                precision={"": "float32"}, devices={"cpu": "", "gpu": ""}, platform="tensorflow_kcopy",
                suffixes=(".kcopy",), stage="convert_kcopy", outs=("${paths.converted}/kcopy",),
                stage_deps=("${paths.model}", "${paths.tfrecords}/manifest.json"), stage_params=())
'''
KCOPY_STAGE = '''
"""convert_kcopy stage: the test-only kcopy format."""

from pathlib import Path

from flowerpipe.pipeline import stage
from flowerpipe.params import Params


def main(p: Params) -> None:
    """Copy the model and record it like every conversion stage."""
    from flowerpipe.formats import kcopy_format
    from flowerpipe.formats.base import size_mb, write_labels
    from flowerpipe.jsonio import read_json

    out = kcopy_format.convert(Path(p.paths.model), kcopy_format.FORMAT.path(p, ""))
    classes = read_json(Path(p.paths.tfrecords) / "manifest.json")["classes"]
    write_labels(out, classes)
    stage.write_json(Path(p.paths.reports) / "convert_kcopy.json",
                     {"kcopy": {"status": "ok", "seconds": 0.0, "size_mb": size_mb(out), "path": str(out)}})


if __name__ == "__main__":
    stage.run(main, tensorflow=False)
'''


@pytest.mark.slow
def test_a_format_added_as_one_module_is_picked_up_everywhere(project, tmp_path):
    """One module and its stage; dvc.yaml regenerated; no other edit: registry, params, evaluate, benchmark,
    the server and the report all take it, and nothing before the conversions re-runs."""
    repo, env = _copy(project, tmp_path)
    (repo / "flowerpipe/formats/kcopy_format.py").write_text(KCOPY.lstrip())
    (repo / "stages/convert_kcopy.py").write_text(KCOPY_STAGE.lstrip())
    sh([sys.executable, "-m", "flowerpipe.pipeline.dag"], repo, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["benchmark"]["runtimes"] = ["kcopy"]  # the names a user may now write in params.yaml
    params["headline"]["formats"] = ["kcopy"]
    params["serve"]["format"] = "kcopy"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh([sys.executable, "-m", "flowerpipe.cli", "check"], repo, env)
    out = sh(["dvc", "repro"], repo, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"convert_kcopy", "evaluate", "benchmark", "infer", "serve_check", "report", "ship"}, out[-3000:]
    # served, but with no model-repository layout: the ship stage records why, and dvc repro goes on
    shipped = json.loads((repo / "models" / "ship" / "status.json").read_text())
    assert shipped["status"] == "skipped" and shipped["reason"].startswith("kcopy models cannot be shipped")
    scored = json.loads((repo / "reports/evaluate.json").read_text())["formats"]
    assert scored["kcopy"]["status"] == "ok" and scored["kcopy"]["top1_agreement"] == 1.0
    assert scored["kcopy"]["accuracy"] == scored["keras"]["accuracy"]
    timed = json.loads((repo / "reports/benchmark.json").read_text())["results"]["kcopy"]
    assert timed["cpu"]["b1"]["status"] == "ok"
    assert set(json.loads((repo / "metrics/evaluate.json").read_text())) >= {"kcopy"}
    served = json.loads((repo / "reports/serve.json").read_text())
    assert served["format"] == "kcopy" and all(a["top1_agreement"] == 1.0 for a in served["answers"].values())
    assert "kcopy" in (repo / "reports/summary/report.md").read_text()
    code = ("from flowerpipe.formats.registry import detect, platform; from pathlib import Path; "
            "print(detect(Path('m/model.kcopy')), platform('kcopy'))")  # the copy's registry, as its stages see it
    assert sh([sys.executable, "-c", code], repo, env).strip() == "('kcopy', '') tensorflow_kcopy"
