"""Shared fixtures: small generated photo sets, archives and a tiny trained model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).resolve().parents[1]


def _has_gpu() -> bool:
    from flowerpipe.measure.devices import gpu_names

    return bool(gpu_names())


# What the code itself asks (the NVIDIA driver, through pynvml): tests expect GPU rows measured where this is true,
# skipped with their reason where not, so that one suite passes on both kinds of machine.
HAS_GPU = _has_gpu()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if HAS_GPU else "3")  # as flowerpipe.quiet: GPU warnings shown
if HAS_GPU:  # memory growth before any test's first op: the background `dvc repro` builds TensorRT engines beside it
    from flowerpipe.measure.devices import tensorflow_gpu_missing

    tensorflow_gpu_missing()
CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
COLORS = [(230, 230, 230), (240, 220, 30), (200, 30, 60), (250, 160, 20), (150, 40, 200)]


def make_photos(root: Path, per_class: int = 8, size: int = 64, seed: int = 0) -> Path:
    """Class folders of JPEGs whose colour and texture depend on the class (learnable, not trivial)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for c, name in enumerate(CLASSES):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(COLORS[c], np.float32)
            stripes = 40 * np.sin((xx * (c + 1) + yy * (5 - c)) / 6.0 + rng.uniform(0, 6))[..., None]
            img = base * rng.uniform(0.7, 1.0) + stripes + rng.normal(0, 20, (size, size, 3))
            w, h = size + int(rng.integers(0, 24)), size + int(rng.integers(0, 24))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((w, h)).save(d / f"{name}_{i:03d}.jpg",
                                                                                       quality=90)
    (root / "LICENSE.txt").write_text("photos made by the test suite\n")
    return root


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A small folder dataset: 5 classes x 8 images."""
    return make_photos(tmp_path / "flower_photos")


def write_params(folder: Path, overrides: dict) -> Path:
    """params.yaml in folder: the project's defaults with nested overrides."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in overrides.items():
        p.setdefault(section, {}).update(values)
    out = folder / "params.yaml"
    out.write_text(yaml.safe_dump(p, sort_keys=False))
    return out


TINY = {
    "split": {"val": 0.2, "test": 0.2},
    # Xception's own graph at 1/8 width with one middle-flow block: 0.16 M weights, so a run takes seconds
    "model": {"image_size": 71, "weights": "none", "width": 0.125, "middle_blocks": 1},
    "train": {"batch_size": 8, "scratch_epochs": 1, "epochs": 3, "fine_tune_epochs": 1, "patience": 0},
    "tflite": {"calibration_images": 16},
    "onnx": {"calibration_images": 16},
    "openvino": {"calibration_images": 16},
    "benchmark": {"batch_sizes": [1, 2], "rounds": 1, "warmup": 1, "iterations": 2, "min_seconds": 0.0,
                  "max_seconds": 5.0},
    "serve": {"concurrency": [1, 2], "requests": 6, "tune_max_batch": [4], "tune_batch_window_ms": [2]},
}


def run_stage(name: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run stages/<name>.py in cwd, as dvc would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"stage {name} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


GIT_ENV = {"GIT_AUTHOR_NAME": "flowerpipe-tests", "GIT_AUTHOR_EMAIL": "tests@localhost",
           "GIT_COMMITTER_NAME": "flowerpipe-tests", "GIT_COMMITTER_EMAIL": "tests@localhost"}
# The shared project: enough images and epochs that the model really discriminates (formats are compared).
# Timed: the headline formats, ONNX (a float runtime without TensorFlow) and one GPU-only runtime (a skip).
# Its model trains with a constant learning rate and no weight decay: with the cosine recipe the 8-epoch tiny
# model ends sharper (Keras 15/15 on test), and int8 flips 3-5 of its 15 test images (agreement 0.67-0.8).
# (Adam at 1e-3, the scratch defaults before the 30-minute recipe's 2e-3: at 2e-3 onnx-int8 flipped 4 of 15.)
PROJECT = {**TINY, "train": {**TINY["train"], "scratch_epochs": 8, "augment": False, "scratch_schedule": "constant",
                             "scratch_weight_decay": 0.0, "scratch_learning_rate": 0.001},
           "benchmark": {**TINY["benchmark"], "rounds": 2, "runtimes": ["savedmodel", "tflite-int8", "onnx",
                                                                         "openvino-int8", "tensorrt-fp16"]}}


def sh(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 1500) -> str:
    """Run a command; fail the test with its output when it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def dvc_env() -> dict:
    """The environment a user's shell has after `make env`: the venv first on PATH, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "DVC_NO_ANALYTICS": "1", **GIT_ENV}


def copy_checkout(repo: Path) -> Path:
    """The project's tracked (and new, not ignored) files, without any run's outputs, in a fresh folder."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True, env=os.environ.copy()).stdout.split()  # (test_install: why)
    for f in files:
        if (ROOT / f).is_file() and not f.startswith(("metrics/", "plots/", "reports/", "dvclive/", "dvc.lock")):
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    return repo


def git_project(repo: Path, params: dict) -> tuple[Path, dict]:
    """A committed git checkout of this project in repo with params overrides; the environment to run dvc in."""
    copy_checkout(repo)
    write_params(repo, params)
    env = dvc_env()
    sh(["git", "init", "-q", "-b", "main"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "tiny project"], repo, env)
    return repo, env


def build_project(work: Path) -> tuple[Path, dict]:
    """A git + DVC checkout of this project on tiny generated photos after one real `dvc repro`, committed."""
    photos = make_photos(work / "photos", per_class=16)
    repo, env = git_project(work / "repo", {**PROJECT, "data": {"url": str(photos)}})
    sh(["dvc", "repro"], repo, {**env, "FLOWERPIPE_TRACE_IMPORTS": str(work / "imports")})  # see test_dag
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "baseline run"], repo, env)
    return repo, env


class Background:
    """A function run in a thread from the start of the session; result() waits for it and re-raises its error."""

    def __init__(self, fn, *args):
        self.value, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self.thread.start()

    def _run(self, fn, *args) -> None:
        try:
            self.value = fn(*args)
        except BaseException as exc:  # handed to every test that needs it
            self.error = exc

    def result(self):
        """The function's return value, once it has finished."""
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


_SHARED: dict[str, Background] = {}


def _tier(item) -> int:
    if "smoke_run" in getattr(item, "fixturenames", ()):
        return 3  # waits for its background run, which started with the session
    if item.get_closest_marker("e2e") is not None:
        return 2
    return 1 if "project" in getattr(item, "fixturenames", ()) else 0


def pytest_collection_modifyitems(items):
    """Tests that need no shared project first, then its readers, then the end-to-end tests (which change it),
    then the smoke run on another Python."""
    items.sort(key=_tier)


# Session fixtures built in a thread from the start (mostly download and unpacking, beside the project build):
# fixture name -> the function in test_install.py that makes it.
INSTALLS = {"slim_venv": "make_slim_venv", "smoke_run": "smoke_in_fresh_env"}


def _started(name: str, tmp_path_factory) -> Background:
    """The background job behind session fixture `name`, started now if it has not been."""
    if name not in _SHARED:
        if name == "project":
            _SHARED[name] = Background(build_project, tmp_path_factory.mktemp(name))
        else:
            import test_install

            _SHARED[name] = Background(getattr(test_install, INSTALLS[name]), tmp_path_factory.mktemp(name))
    return _SHARED[name]


def pytest_collection_finish(session):
    """Start the shared project and the installs the selected tests need, while the other tests run."""
    if session.config.option.collectonly:
        return
    names = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if any(_tier(item) in (1, 2) for item in session.items):
        # Most of the DAG is single-threaded process start-up: the unit tests use the other core meanwhile.
        _started("project", session.config._tmp_path_factory)
    for name in names & INSTALLS.keys():
        _started(name, session.config._tmp_path_factory)


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> tuple[Path, dict]:
    """The shared project: a git + DVC checkout on tiny generated photos after one real `dvc repro`, committed.

    Built once per session, in the background from the start; the format, benchmark, training and end-to-end
    tests read it. Tests that change it (experiments) run in the e2e module, last, and restore the workspace.
    """
    return _started("project", tmp_path_factory).result()


def call_stage(name: str, cwd: Path) -> None:
    """Run stages/<name>.py's main in this process, in cwd, with the same declared-params view dvc's run gets.

    For data stages whose subprocess would prove nothing more; training stays in a subprocess (global Keras state).
    """
    import contextlib
    import importlib

    from flowerpipe.pipeline.stage import stage_params

    module = importlib.import_module(f"stages.{name}")
    with contextlib.chdir(cwd):
        module.main(stage_params(name, "params.yaml", ROOT / "dvc.yaml"))


def stage_cli(name: str, cwd: Path) -> tuple[int, str, str]:
    """Run a stage as its script's `stage.run(main)` does, in this process: (exit code, stdout, stderr).

    For checking a stage's one-line errors without a new process that imports TensorFlow again.
    """
    import contextlib
    import importlib
    import io

    from flowerpipe.pipeline import stage

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            stage.run(importlib.import_module(f"stages.{name}").main)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def slim_venv(tmp_path_factory) -> Path | None:
    """A venv on another supported Python with only locks/serve.txt installed (None when there is no such Python)."""
    return _started("slim_venv", tmp_path_factory).result()


@pytest.fixture(scope="session")
def trained(project) -> Path:
    """The shared project's folder: tiny TFRecords, a trained Xception, every converted format and their records."""
    return project[0]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> str | None:
    """The last line of tests/smoke.py in a fresh environment on another supported Python (None without one)."""
    return _started("smoke_run", tmp_path_factory).result()


class FakeLive:
    """The part of dvclive.Live the epoch log uses, recording what it was given."""

    def __init__(self):
        self.rows, self.step = [], 0

    def log_metric(self, name, value, **_):
        self.rows.append((self.step, name, value))

    def next_step(self):
        self.step += 1
