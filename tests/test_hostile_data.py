"""Hostile inputs to the data stages: each ends in its exact outcome, and the previous outputs stay byte-identical."""

import gzip
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, make_photos, stage_cli, write_params
from PIL import Image

KEPT = ("data/raw", "data/tfrecords", "data/.cache", "reports")


def snapshot(repo: Path) -> dict[str, str]:
    """sha256 of every file the data stages wrote."""
    out = {}
    for top in KEPT:
        for p in sorted((repo / top).rglob("*")):
            if p.is_file() and p.suffix != ".part":  # a partial download is kept to be resumed, not an output
                out[p.relative_to(repo).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def set_params(repo: Path, **sections) -> None:
    """Update params.yaml section by section: set_params(repo, data={"url": ...})."""
    p = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in sections.items():
        p[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """Photos and a project after a good download + tfrecords run, built once for the module."""
    base = tmp_path_factory.mktemp("hostile")
    photos = make_photos(base / "photos", per_class=6, size=32)
    repo = base / "proj"
    repo.mkdir()
    write_params(repo, {"data": {"url": str(photos), "sha256": "", "retries": 2, "stall_s": 2, "timeout_s": 30},
                        "split": {"val": 0.2, "test": 0.2}, "tfrecords": {"workers": 1}})
    for name in ("download", "tfrecords"):
        code, _, err = stage_cli(name, repo)
        assert code == 0, err
    return base


@pytest.fixture
def proj(template, tmp_path) -> Path:
    """A fresh copy of the template project, reading its own copy of the photos."""
    shutil.copytree(template / "photos", tmp_path / "photos", symlinks=True)
    repo = shutil.copytree(template / "proj", tmp_path / "proj", symlinks=True)
    set_params(repo, data={"url": str(tmp_path / "photos")})
    return repo


def fails(repo: Path, stage: str, pattern: str) -> str:
    """Run a stage that must stop: exit 1, one `error:` line matching pattern, no traceback, outputs untouched."""
    before = snapshot(repo)
    code, _, err = stage_cli(stage, repo)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert re.search(pattern, errors[0]), errors[0]
    assert snapshot(repo) == before
    return errors[0]


def succeeds(repo: Path, stage: str) -> dict:
    """Run a stage that must finish; return its detail record."""
    code, _, err = stage_cli(stage, repo)
    assert code == 0, err
    name = {"download": "download", "tfrecords": "data"}[stage]
    return yaml.safe_load((repo / "reports" / f"{name}.json").read_text())


def tgz(photos: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(photos, arcname="flower_photos")
    return out


def tar_bytes(photos: Path, extra: list[tuple[str, bytes]] = (), encoding: str = "utf-8") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding=encoding) as tar:
        tar.add(photos, arcname="flower_photos")
        for name, data in extra:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# ---------------------------------------------------------------- paths a stage would delete


@pytest.mark.parametrize("stage, params, pattern", [
    ("download", {"paths": {"raw": "."}}, r"paths.raw: \. is the project folder itself"),
    ("download", {"paths": {"raw": ".."}}, r"paths.raw: \.\. is outside the project folder"),
    ("download", {"paths": {"raw": "/tmp"}}, r"paths.raw: /tmp is outside the project folder"),
    ("download", {"paths": {"raw": "reports"}}, r"overlap|contains"),
    ("download", {"paths": {"raw": ".git"}}, r"would replace the project's own \.git"),
    ("download", {"paths": {"raw": ".git/objects"}}, r"would replace the project's own \.git"),
    ("download", {"paths": {"raw": "data"}}, r"paths.raw: data contains download cache"),
    ("tfrecords", {"paths": {"tfrecords": "data/raw"}}, r"paths.tfrecords: data/raw overlaps paths.raw"),
    ("tfrecords", {"paths": {"tfrecords": "data"}}, r"paths.tfrecords: data overlaps paths.raw"),
    ("tfrecords", {"paths": {"tfrecords": "."}}, r"the project folder itself"),
    ("train", {"paths": {"model": "."}}, r"paths.model: \. is the project folder itself"),
    ("train", {"paths": {"train_dir": "data/tfrecords/x"}}, r"paths.train_dir: .* overlaps paths.tfrecords"),
    ("export", {"paths": {"serving": "../elsewhere"}}, r"is outside the project folder"),
])
def test_outputs_that_would_destroy_something_are_refused_first(proj, stage, params, pattern):
    (proj / ".git").mkdir()
    (proj / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    set_params(proj, **params)
    fails(proj, stage, pattern)
    assert (proj / ".git" / "HEAD").exists() and (proj / "params.yaml").exists()


def test_a_source_folder_inside_the_output_is_refused(proj):
    set_params(proj, data={"url": str(proj / "data" / "raw")})
    fails(proj, "download", r"paths.raw: .* overlaps data.url")


# ---------------------------------------------------------------- archives, with no checksum to catch them


def archive_case(kind: str, photos: Path, tmp: Path) -> Path:
    """A damaged or surprising archive of the photos."""
    good_tgz = tgz(photos, tmp / "good.tgz").read_bytes()
    raw_tar = tar_bytes(photos)
    out = tmp / f"{kind}.tgz"
    if kind == "gzip_cut_half":
        out.write_bytes(good_tgz[: len(good_tgz) // 2])
    elif kind == "gzip_bad_crc":
        out.write_bytes(good_tgz[:-8] + bytes(b ^ 0xFF for b in good_tgz[-8:-4]) + good_tgz[-4:])
    elif kind == "tar_cut_at_member":
        with tarfile.open(fileobj=io.BytesIO(raw_tar)) as t:
            members = t.getmembers()
            end = members[len(members) // 2].offset  # a header boundary: what tar reading alone accepts
        out = tmp / "cut.tar"
        out.write_bytes(raw_tar[:end])
    elif kind == "gzip_trailing_garbage":
        out.write_bytes(good_tgz + b"this is not gzip")
    elif kind == "tar_trailing_data":
        out = tmp / "trailing.tar"
        out.write_bytes(raw_tar + b"X" * 1024)
    elif kind == "html_page":
        out.write_bytes(b"<!DOCTYPE html><html><body>Sign in to download</body></html>")
    elif kind == "empty":
        out.write_bytes(b"")
    elif kind == "zip_cut":
        out = tmp / "cut.zip"
        out.write_bytes(zip_bytes(photos)[:-100])
    elif kind == "zip_bad_crc":
        data = bytearray(zip_bytes(photos, compress=zipfile.ZIP_STORED))
        data[200] ^= 0xFF  # inside the first stored file's bytes
        out = tmp / "badcrc.zip"
        out.write_bytes(bytes(data))
    elif kind == "zip_encrypted":
        data = bytearray(zip_bytes(photos))
        for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set bit 0 (encrypted) in every header
            for m in re.finditer(re.escape(sig), bytes(data)):
                data[m.start() + flag_at] |= 0x01
        out = tmp / "encrypted.zip"
        out.write_bytes(bytes(data))
    return out


def zip_bytes(photos: Path, compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as zf:
        for p in sorted(photos.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(photos.parent).as_posix())
    return buf.getvalue()


@pytest.mark.parametrize("kind, pattern", [
    ("gzip_cut_half", r"truncated or corrupt"),
    ("gzip_bad_crc", r"truncated or corrupt .*(CRC|crc)"),
    ("tar_cut_at_member", r"without its end-of-archive marker \(truncated\)"),
    ("gzip_trailing_garbage", r"truncated or corrupt"),
    ("tar_trailing_data", r"unexpected data after the end of the tar archive"),
    ("html_page", r"it is an HTML page"),
    ("empty", r"is not a \.tgz, \.tar or \.zip archive"),
    ("zip_cut", r"the zip archive is truncated or corrupt \(no central directory at its end\)"),
    ("zip_bad_crc", r"bad CRC"),
    ("zip_encrypted", r"encrypted"),
])
def test_damaged_archives_stop_with_one_line(proj, tmp_path, kind, pattern):
    set_params(proj, data={"url": str(archive_case(kind, tmp_path / "photos", tmp_path))})
    fails(proj, "download", pattern)


def test_nested_archive_and_non_utf8_names_are_refused_and_listed(proj, tmp_path):
    # latin-1 names: the bytes ff fe, which are not UTF-8
    raw = tar_bytes(tmp_path / "photos", [("flower_photos/daisy/more.tgz", b"x" * 100),
                                          ("flower_photos/roses/\xff\xfe.jpg", b"y")], encoding="latin-1")
    (tmp_path / "nested.tar").write_bytes(raw)
    set_params(proj, data={"url": str(tmp_path / "nested.tar")})
    record = succeeds(proj, "download")
    reasons = {r["path"]: r["reason"] for r in record["refused"]}
    assert reasons == {"flower_photos/daisy/more.tgz": "archives inside the archive are not extracted",
                       "flower_photos/roses/\\xff\\xfe.jpg": "file name is not valid UTF-8"}, reasons
    assert not (proj / "data" / "raw" / "daisy" / "more.tgz").exists()


@pytest.mark.parametrize("params, pattern", [
    ({"max_extract_mb": 1}, r"expands to more than data.max_extract_mb=1 MB"),
    ({"max_files": 10}, r"holds more than data.max_files=10 files"),
])
def test_archive_limits_name_their_param(proj, tmp_path, params, pattern):
    bomb = tar_bytes(tmp_path / "photos", [("flower_photos/daisy/zeros.jpg", bytes(3 << 20))])
    (tmp_path / "bomb.tgz").write_bytes(gzip.compress(bomb))  # 3 MB of zeros compress to a few KB
    set_params(proj, data={"url": str(tmp_path / "bomb.tgz"), **params})
    fails(proj, "download", pattern)


def test_folder_limits_and_special_sources(proj, tmp_path):
    set_params(proj, data={"max_files": 5})
    fails(proj, "download", r"data.max_files=5")
    set_params(proj, data={"max_files": 200000, "url": "/dev/zero"})
    fails(proj, "download", r"/dev/zero is not a regular file or a folder")
    os.mkfifo(tmp_path / "pipe.tgz")
    set_params(proj, data={"url": str(tmp_path / "pipe.tgz")})
    fails(proj, "download", r"pipe.tgz is not a regular file or a folder")
    set_params(proj, data={"url": str(tmp_path / "missing.tgz")})
    fails(proj, "download", r"missing.tgz does not exist")


def test_symlinks_and_hidden_entries_in_a_source_folder(proj, tmp_path):
    photos = tmp_path / "photos"
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the dataset")
    (photos / "daisy" / "link.jpg").symlink_to(secret)
    (photos / "roses" / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    (photos / "tulips" / ".DS_Store").write_bytes(b"\0\0")
    (photos / ".hidden_class").mkdir()
    (photos / ".hidden_class" / "a.jpg").write_bytes((photos / "daisy" / "daisy_000.jpg").read_bytes())
    record = succeeds(proj, "download")
    refused = {r["path"]: r["reason"] for r in record["refused"]}
    assert refused == {"daisy/link.jpg": "symbolic links are not followed",
                       "roses/linkdir": "symbolic links are not followed"}
    assert record["hidden_ignored"] == 2 and ".hidden_class" not in record["classes"]
    raw = proj / "data" / "raw"
    assert not (raw / "daisy" / "link.jpg").exists() and not (raw / "tulips" / ".DS_Store").exists()


def test_file_names_that_are_not_utf8_are_refused_not_fatal(proj, tmp_path):
    photos = tmp_path / "photos"
    jpeg = (photos / "daisy" / "daisy_000.jpg").read_bytes()
    (Path(os.fsdecode(os.fsencode(photos / "daisy") + b"/\xff\xfe.jpg"))).write_bytes(jpeg)
    record = succeeds(proj, "download")
    assert record["refused"] == [{"path": "daisy/\\xff\\xfe.jpg", "reason": "file name is not valid UTF-8"}]
    raw = proj / "data" / "raw"  # a raw folder made by hand, without the download stage
    (Path(os.fsdecode(os.fsencode(raw / "roses") + b"/\xfe.jpg"))).write_bytes(jpeg)
    succeeds(proj, "tfrecords")
    manifest = yaml.safe_load((proj / "data" / "tfrecords" / "manifest.json").read_text())
    assert manifest["skipped"] == [{"path": "roses/\\xfe.jpg", "reason": "file name is not valid UTF-8"}]
    data = yaml.safe_load((proj / "reports" / "data.json").read_text())  # every file packed or counted skipped
    assert data["images"] + data["skipped"] + data["hidden_ignored"] == sum(1 for p in raw.rglob("*") if p.is_file())


def test_a_class_folder_whose_name_is_not_utf8_stops_the_tfrecords_stage_naming_it(proj):
    raw = proj / "data" / "raw"  # made by hand (the download stage stops on such a folder too: test_download.py)
    (raw / "roses").rename(os.fsdecode(os.fsencode(raw) + b"/ros\xe9s"))
    fails(proj, "tfrecords", r"^error: data/raw: class folder 'ros\\xe9s' \(6 files\): its name is not valid UTF-8")


def test_tfrecords_without_raw_folder_is_one_line(proj):
    set_params(proj, paths={"raw": "data/missing"})
    fails(proj, "tfrecords", r"data/missing is not a folder of class folders")


@pytest.mark.parametrize("url, pattern", [
    ("http://", r"has no host"),
    ("http://[::1", r"is not a valid URL"),
    ("ftp://example.org/f.tgz", r"unsupported scheme 'ftp'"),
    ("https://no-such-host.invalid/f.tgz", r"cannot resolve host 'no-such-host.invalid'"),
])
def test_bad_urls_are_one_line(proj, url, pattern):
    set_params(proj, data={"url": url})
    fails(proj, "download", pattern)


# ---------------------------------------------------------------- HTTP servers that misbehave


class Hostile(BaseHTTPRequestHandler):
    """Serves one archive; `mode` picks how it misbehaves; every request's Range header is recorded."""

    mode = "ok"
    body = b""
    calls: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        n = len(Hostile.calls)
        rng = self.headers.get("Range", "")
        Hostile.calls.append(rng)
        data, mode = Hostile.body, Hostile.mode
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if mode == "404":
            return self.send_error(404)
        if mode == "always500" or (mode == "503twice" and n < 2):
            return self.send_error(503 if mode == "503twice" else 500)
        if mode == "html":
            page = b"<!DOCTYPE html><html>login</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            return self.wfile.write(page)
        if mode == "416stale" and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return None
        if mode in ("206from0", "206elsewhere") and rng:  # a 206 that does not start where it was asked to
            start = 0 if mode == "206from0" else 7
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        part = data[start:]
        if mode == "stall" and n == 0:
            self.wfile.write(part[: len(part) // 2])
            self.wfile.flush()
            time.sleep(4)  # longer than data.stall_s: the client gives up on this connection and resumes
            return None
        if mode == "trickle":
            for i in range(len(part)):
                self.wfile.write(part[i:i + 1])
                self.wfile.flush()
                time.sleep(0.5)
            return None
        if mode == "truncated":
            self.wfile.write(part[: len(part) // 2])
            return None
        if mode == "dropsoften":  # every connection breaks after a third of the whole archive
            self.wfile.write(part[: len(data) // 3 + 1])
            return None
        self.wfile.write(part)
        return None


@pytest.fixture
def server(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), partial(Hostile))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    Hostile.body = tgz(tmp_path / "photos", tmp_path / "served.tgz").read_bytes()
    Hostile.calls = []
    yield f"http://127.0.0.1:{srv.server_address[1]}/flower_photos.tgz"
    srv.shutdown()


@pytest.mark.parametrize("mode, pattern, calls", [
    ("404", r"the server answered 404", 1),
    ("always500", r"failed after 2 retries: the server answered 500", 3),
    ("html", r"it is an HTML page", 1),
    ("trickle", r"did not finish within data.timeout_s=3s|took longer than data.timeout_s=3s", None),
])
def test_misbehaving_servers_stop_with_one_line(proj, server, mode, pattern, calls, monkeypatch):
    monkeypatch.setattr("flowerpipe.data.http.backoff", lambda s: None)  # no real back-off waits in tests
    Hostile.mode = mode
    set_params(proj, data={"url": server, "timeout_s": 3 if mode == "trickle" else 30})
    fails(proj, "download", pattern)
    assert calls is None or len(Hostile.calls) == calls
    assert not list((proj / "data" / ".cache").glob("*.tgz"))  # nothing bad cached to be reused


@pytest.mark.parametrize("mode", ["503twice", "stall", "416stale", "dropsoften", "206from0", "206elsewhere"])
def test_servers_that_recover_give_the_whole_archive(proj, server, mode, monkeypatch):
    monkeypatch.setattr("flowerpipe.data.http.backoff", lambda s: None)
    Hostile.mode = mode
    # a link that drops often but makes progress each time finishes even with a single retry allowed
    set_params(proj, data={"url": server, "retries": 1 if mode == "dropsoften" else 2})
    cache = proj / "data" / ".cache"
    if mode in ("416stale", "206from0", "206elsewhere"):
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "flower_photos.tgz.part").write_bytes(b"stale bytes from another archive")
    record = succeeds(proj, "download")
    assert record["sha256"] == hashlib.sha256(Hostile.body).hexdigest()
    if mode in ("stall", "dropsoften"):
        assert Hostile.calls[0] == "" and Hostile.calls[1].startswith("bytes=") and Hostile.calls[1] != "bytes=0-"
    if mode == "dropsoften":
        assert len(Hostile.calls) == 3, Hostile.calls


def test_a_bad_download_never_replaces_a_good_cached_archive(proj, server, monkeypatch):
    monkeypatch.setattr("flowerpipe.data.http.backoff", lambda s: None)
    Hostile.mode = "ok"
    set_params(proj, data={"url": server, "retries": 0})
    succeeds(proj, "download")
    cached = proj / "data" / ".cache" / "flower_photos.tgz"
    good = cached.read_bytes()
    Hostile.mode = "truncated"
    fails(proj, "download", r"failed after 0 retries")
    assert cached.read_bytes() == good


# ---------------------------------------------------------------- images


def add_image(raw: Path, rel: str, make) -> None:
    (raw / rel).parent.mkdir(parents=True, exist_ok=True)
    make(raw / rel)


def decoded_mean(repo: Path, rel: str) -> np.ndarray:
    """The mean RGB of a stored image, decoded as training decodes it."""
    from flowerpipe.data.images import check_image, decode_resize

    c = check_image(repo / "data" / "raw" / rel, rel)
    return decode_resize(c.data, 8).numpy().reshape(-1, 3).mean(0)


def test_images_decode_to_what_a_viewer_shows(proj):
    raw = proj / "data" / "raw"
    gray16 = (np.full((20, 20), 32768, np.uint16))
    add_image(raw, "daisy/gray16.png", lambda p: Image.fromarray(gray16).save(p))
    add_image(raw, "roses/palette.bmp", lambda p: Image.new("RGB", (20, 20), (200, 30, 60)).convert("P").save(p))
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    add_image(raw, "tulips/transparent.png", lambda p: rgba.save(p))
    add_image(raw, "dandelion/photo.webp", lambda p: Image.new("RGB", (20, 20), (240, 220, 30)).save(p))
    record = succeeds(proj, "tfrecords")
    assert record["skipped"] == 0
    assert np.allclose(decoded_mean(proj, "daisy/gray16.png"), 128, atol=2)  # half of 16-bit range: mid gray
    assert np.allclose(decoded_mean(proj, "roses/palette.bmp"), (200, 30, 60), atol=12)
    assert np.allclose(decoded_mean(proj, "tulips/transparent.png"), 255, atol=1)  # transparent shows as white
    assert np.allclose(decoded_mean(proj, "dandelion/photo.webp"), (240, 220, 30), atol=8)


@pytest.mark.parametrize("rel, make, params, reason", [
    ("daisy/bomb.png", lambda p: Image.new("1", (12000, 12000)).save(p), {"max_image_megapixels": 100},
     r"over tfrecords.max_image_megapixels=100"),
    ("daisy/huge.jpg", lambda p: p.write_bytes(os.urandom(2 << 20)), {"max_image_mb": 1},
     r"over tfrecords.max_image_mb=1"),
    ("daisy/float.tif", lambda p: Image.fromarray(np.ones((8, 8), np.float32)).save(p), {},
     r"unsupported colour mode F"),
    ("daisy/cut.jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 30), {}, r"corrupt image|not an image"),
    ("daisy/page.jpg", lambda p: p.write_text("<html></html>"), {}, r"not an image"),
])
def test_bad_images_are_skipped_and_listed_never_fatal(proj, rel, make, params, reason):
    add_image(proj / "data" / "raw", rel, make)
    if params:
        set_params(proj, tfrecords=params)
    record = succeeds(proj, "tfrecords")
    manifest = yaml.safe_load((proj / "data" / "tfrecords" / "manifest.json").read_text())
    skipped = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert record["skipped"] == 1 and re.search(reason, skipped[rel]), skipped


def test_classes_too_small_or_empty_are_one_line(proj):
    raw = proj / "data" / "raw"
    (raw / "lilies").mkdir()
    (raw / "lilies" / "a.jpg").write_text("not a photo")
    fails(proj, "tfrecords", r"class 'lilies' has no usable image")
    for i in range(2):
        (raw / "lilies" / f"ok{i}.jpg").write_bytes((raw / "daisy" / "daisy_000.jpg").read_bytes())
    fails(proj, "tfrecords", r"class 'lilies' has 2 usable image\(s\): too few")


def test_hidden_entries_in_class_folders_are_ignored_and_counted(proj):
    raw = proj / "data" / "raw"
    (raw / "daisy" / ".thumbs").mkdir()
    (raw / "daisy" / ".thumbs" / "t.jpg").write_bytes((raw / "daisy" / "daisy_000.jpg").read_bytes())
    (raw / "roses" / "._roses_000.jpg").write_bytes(b"\0\5\26\7")  # macOS resource fork
    record = succeeds(proj, "tfrecords")
    assert record["hidden_ignored"] == 2 and record["skipped"] == 0 and record["images"] == 30


# ---------------------------------------------------------------- interruptions


def test_leftovers_of_an_interrupted_run_are_cleaned(proj):
    for stale in ("data/.raw.abc123", "data/.tfrecords.xyz", "data/.raw.old"):
        (proj / stale).mkdir()
        (proj / stale / "junk").write_text("left by a killed run")
    succeeds(proj, "download")
    succeeds(proj, "tfrecords")
    assert sorted(p.name for p in (proj / "data").iterdir()) == ["raw", "tfrecords"]


def _launched_with(disposition) -> list[str]:
    """The stage's command line, started with this SIGINT disposition (SIG_IGN: as `cmd &` in a script does).

    A small Python sets the disposition and execs the stage (an ignored signal stays ignored across exec). Not a
    preexec_fn: the suite's background builds run in threads, and a child forked from a threaded process can
    deadlock before exec (the subprocess docs warn of it); CI once saw exactly that, a stage that never started.
    """
    name = "SIG_IGN" if disposition == signal.SIG_IGN else "SIG_DFL"
    stage = [sys.executable, "-m", "stages.tfrecords"]
    return [sys.executable, "-c", f"import os, signal; signal.signal(signal.SIGINT, signal.{name}); "
            f"os.execv({stage[0]!r}, {stage!r})"]


@pytest.mark.parametrize("sig, group, launched", [(signal.SIGTERM, False, signal.SIG_DFL),
                                                  (signal.SIGINT, True, signal.SIG_DFL),
                                                  (signal.SIGINT, True, signal.SIG_IGN)],
                         ids=["kill", "ctrl-c", "ctrl-c-started-in-background"])
def test_a_signal_during_the_image_check_stops_workers_and_keeps_outputs(proj, sig, group, launched):
    """`kill` reaches the stage alone; Ctrl-C reaches its whole process group, workers included; a stage that a
    shell without job control started with SIGINT ignored still stops on Ctrl-C. The child's SIGINT disposition is
    set here, so the test means the same however the suite itself was launched."""
    raw = proj / "data" / "raw"
    ramp = np.linspace(0, 255, 1200).astype(np.uint8)
    buf = io.BytesIO()  # 7 KB on disk, about 20 ms to check: 3,000 of them keep 2 workers busy for half a minute
    Image.fromarray(np.stack([np.tile(ramp, (1200, 1)), np.tile(ramp[:, None], (1, 1200)),
                              np.full((1200, 1200), 128, np.uint8)], -1)).save(buf, "PNG")
    for i in range(3000):  # still checking when the signal comes, however fast the machine is today
        (raw / "daisy" / f"copy_{i:04d}.png").write_bytes(buf.getvalue())
    set_params(proj, tfrecords={"workers": 2})
    before = snapshot(proj)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(_launched_with(launched), cwd=proj, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    # The stage imports TensorFlow before it starts its workers, slow on a machine the session's background builds
    # load: wait for the workers or for the stage's end (and show why it ended), not a short fixed time.
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not children(proc.pid):
        time.sleep(0.2)
    workers = children(proc.pid)
    if not workers:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"no worker processes started (exit {proc.returncode}):\n{out[-1000:]}\n{err[-3000:]}")
    time.sleep(1.0)
    sent = time.perf_counter()
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    print(f"stopped {time.perf_counter() - sent:.2f} s after the signal")  # the bound: a second
    assert proc.returncode == 130, err[-2000:]
    assert time.perf_counter() - sent < 10
    assert err.strip().splitlines()[-1] == "error: stage tfrecords interrupted; its previous outputs are kept"
    time.sleep(0.5)
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in state(w)], "workers left running"
    assert snapshot(proj) == before
    assert not [p for p in (proj / "data").iterdir() if p.name.startswith(".tfrecords.")]


def children(pid: int) -> list[int]:
    """Process ids whose parent is pid (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def state(pid: int) -> str:
    """A process's state letter (Z for a zombie), or '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""
