"""The Dockerfiles, read without Docker (none runs here): what they copy exists, each installs its own lock."""

import re
import shlex

import pytest
from conftest import ROOT
from test_dependencies import lock

# The Python each base image runs: python:3.12-* images, and Ubuntu 24.04's python3.
BASE_PYTHON = {r"python:3\.(\d+)": None, r"ubuntu24\.04": "12"}


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("profile", ["cpu", "gpu", "serve"])
def test_each_dockerfile_installs_its_own_lock_with_hashes_and_runs_what_it_installed(profile):
    """COPY sources exist; the lock copied is locks/<profile>.txt, installed with --require-hashes; CMD is installed."""
    steps = instructions(ROOT / "deploy" / f"Dockerfile.{profile}")
    copies = [shlex.split(args) for op, args in steps if op == "COPY"]
    for *sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile.{profile} copies {source}, which is not in the repository"
    locks = [(src, dest) for *srcs, dest in copies for src in srcs if src.startswith("locks/")]
    build = [(f"locks/{profile}-build.txt", f"/tmp/{profile}-build.txt")] if profile == "gpu" else []  # see locks/
    assert locks == [(f"locks/{profile}.txt", f"/tmp/{profile}.txt"), *build]
    pip_runs = [args for op, args in steps if op == "RUN" and "pip install" in args]
    assert any(f"--require-hashes -r /tmp/{profile}.txt" in run for run in pip_runs), pip_runs
    pins = lock(profile)
    for run in pip_runs:
        if "--no-build-isolation" in run:  # the build backend must already be in the image, from the lock
            assert "setuptools" in pins, f"Dockerfile.{profile} builds without isolation but its lock has no setuptools"
        if "/src" in run:
            assert "--no-deps" in run, "the project itself must add nothing the lock did not pin"
    command = shlex.split(re.sub(r'[\[\],]', " ", next(args for op, args in steps if op == "CMD")))[0]
    assert command == "flowerpipe" or command in pins, f"CMD runs {command}, which the image does not install"


@pytest.mark.parametrize("profile", ["cpu", "gpu", "serve"])
def test_each_base_image_runs_a_python_the_locks_support(profile):
    """The base image's Python is one of the supported 3.11-3.13."""
    base = next(args for op, args in instructions(ROOT / "deploy" / f"Dockerfile.{profile}") if op == "FROM")
    minors = [m.group(1) if m.groups() else fixed for pattern, fixed in BASE_PYTHON.items()
              if (m := re.search(pattern, base))]
    assert minors and 11 <= int(minors[0]) <= 13, f"{base}: no supported Python known for this base image"


def test_the_kserve_runtime_runs_what_the_serve_image_installs():
    """KServe's ServingRuntime sets `args` and no `command`: with no ENTRYPOINT in Dockerfile.serve, args replace its
    CMD whole, so they must start with the program the CMD runs."""
    import yaml

    steps = instructions(ROOT / "deploy" / "Dockerfile.serve")
    assert not [args for op, args in steps if op == "ENTRYPOINT"]
    cmd = shlex.split(re.sub(r'[\[\],]', " ", next(args for op, args in steps if op == "CMD")))
    for runtime in yaml.safe_load_all((ROOT / "deploy" / "kserve-servingruntime.yaml").read_text()):
        container, = runtime["spec"]["containers"]
        assert "command" not in container and container["args"][:2] == cmd[:2] == ["flowerpipe", "serve"]
