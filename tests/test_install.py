"""The slim serving profile, installed from its lock on another supported Python, serves a copied model folder."""

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

# Run in the session's background threads (conftest.INSTALLS) while tests change os.environ in the main thread:
# every subprocess here gets its own copy of the environment. With env=None a vfork()ed child reads the process's
# environ, which a concurrent putenv can reallocate under it; one `make test` here had execve of the pyenv shim
# fail with "[Errno 14] Bad address", which that race explains.


def other_python() -> str | None:
    """A working Python 3.11-3.13 other than this one ($SMOKE_PYTHON, else the PATH or pyenv, newest first)."""
    names = [f"python3.{m}" for m in (13, 12, 11) if m != sys.version_info.minor]
    candidates = [os.environ.get("SMOKE_PYTHON")] + [shutil.which(n) for n in names]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[123].*/bin/python3.1[123]")),
                         reverse=True)
    probe = "import sys; print(sys.version_info[:2] != (%d, %d) and (3, 11) <= sys.version_info[:2] <= (3, 13))"
    for exe in filter(None, candidates):
        run = subprocess.run([exe, "-c", probe % sys.version_info[:2]], capture_output=True, text=True,
                             env=os.environ.copy())
        if run.returncode == 0 and run.stdout.strip() == "True":
            return exe
    return None


# What pip and uv say when the package index cannot be reached (no network, no DNS, a proxy that refuses).
OFFLINE = ("Failed to fetch", "Could not connect", "dns error", "Network is unreachable", "os error 101",
           "Temporary failure in name resolution", "Name or service not known", "NewConnectionError",
           "Connection refused", "ConnectTimeout", "Failed to establish a new connection")


def install(step: list[str], timeout: int = 1200) -> None:
    """Run an install step; skip the test (with pip's or uv's own line) when the package index is out of reach."""
    run = subprocess.run(step, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    if run.returncode == 0:
        return
    said = run.stdout + run.stderr
    offline = next((line.strip() for line in said.splitlines() if any(m in line for m in OFFLINE)), None)
    if offline:
        pytest.skip(f"the package index is out of reach here ({offline[:200]}); this test installs from it")
    raise AssertionError(f"{' '.join(step)} failed:\n{said[-4000:]}")


def source_copy(folder: Path) -> Path:
    """The project's tracked files in a fresh folder, to install from as a user's clone would."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True,
                           env=os.environ.copy()).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (folder / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, folder / f)
    return folder


def smoke_in_fresh_env(folder: Path) -> str | None:
    """tests/smoke.py in a fresh uv environment on another supported Python from locks/cpu.txt: its last line.

    None when the machine has no second supported Python. uv, not pip: 15 s against 150 s for this lock here.
    """
    python = other_python()
    if python is None:
        return None
    uv, venv = str(Path(sys.executable).with_name("uv")), folder / "venv"
    install([uv, "venv", "--quiet", "--python", python, str(venv)])
    install([uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "--require-hashes", "-r",
             str(ROOT / "locks" / "cpu.txt")])
    step = [str(venv / "bin" / "python"), str(ROOT / "tests" / "smoke.py")]
    run = subprocess.run(step, capture_output=True, text=True, timeout=1200, env=os.environ.copy())
    assert run.returncode == 0, f"{' '.join(step)} failed:\n{run.stdout[-2000:]}{run.stderr[-3000:]}"
    shutil.rmtree(venv)  # 2.4 GB
    return run.stdout.strip().splitlines()[-1]


def make_slim_venv(folder: Path) -> Path | None:
    """A fresh venv on another supported Python from locks/serve.txt (hashes required), or None without one."""
    python = other_python()
    if python is None:
        return None
    venv = folder / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, env=os.environ.copy())
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    install([*pip, "--require-hashes", "-r", str(ROOT / "locks" / "serve.txt")], timeout=900)
    install([*pip, "--no-deps", str(source_copy(folder / "src"))], timeout=900)  # the README's two lines
    return venv


@pytest.mark.slow
def test_slim_serving_install_on_another_python_serves_a_copied_model_folder(project, slim_venv, tmp_path):
    import httpx

    from flowerpipe.measure.loadtest import free_port, running_server
    from flowerpipe.serving.artifacts import load_artifact
    from flowerpipe.serving.client import to_png_b64

    if slim_venv is None:
        pytest.skip("no Python 3.12 or 3.13 besides this one on this machine")
    venv = slim_venv
    shutil.copytree(project[0] / "models", tmp_path / "models")
    model = tmp_path / "models" / "converted" / "openvino" / "float32" / "model.xml"
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import tensorflow"], capture_output=True, text=True)
    assert "No module named 'tensorflow'" in probe.stderr  # slim: no TensorFlow, no DVC, no converters
    for absent in ("dvc", "tf2onnx", "nncf", "matplotlib"):
        assert not list((venv / "lib").glob(f"python3.*/site-packages/{absent}")), absent

    x = np.random.default_rng(0).integers(0, 256, (2, 71, 71, 3)).astype(np.float32)
    expected = load_artifact(model).predict(x)
    with running_server([str(model.parent), "--name", "flowers"], free_port(), cwd=tmp_path,
                        command=[str(venv / "bin" / "flowerpipe"), "serve"]) as server:  # the entry point pip installed
        r = httpx.post(f"{server.url}/v1/models/flowers:predict", timeout=60,
                       json={"signature_name": "serving_bytes", "instances": [to_png_b64(i) for i in x]})
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert r.status_code == 200, r.text
    probs = np.asarray([p["probabilities"] for p in r.json()["predictions"]])
    assert np.abs(probs - expected).max() < 1e-4


def test_smoke_run_in_a_fresh_environment_on_another_python(smoke_run):
    """Every module imports, download and tfrecords run, and one photo is predicted, on a second Python."""
    if smoke_run is None:
        pytest.skip("no supported Python other than this one here: set SMOKE_PYTHON=/path/to/python3.1x")
    assert smoke_run.startswith("smoke passed on Python 3.1") and f"3.{sys.version_info.minor}." not in smoke_run
