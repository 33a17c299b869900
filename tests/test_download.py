import hashlib
import io
import os
import tarfile
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import CLASSES, make_photos, run_stage, write_params

from flowerpipe.data.download import DownloadError, Source, extract, fetch, find_class_root, local_path


def make_tgz(photos: Path, out: Path, top: str = "flower_photos") -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(photos, arcname=top)
    return out


def test_local_folder(photos, tmp_path):
    src = fetch(str(photos), tmp_path / "cache")
    assert src.kind == "folder" and len(src.sha256) == 64
    report = extract(src, tmp_path / "raw")
    assert report.classes == CLASSES
    assert not (tmp_path / "raw" / "LICENSE.txt").exists()
    assert len(list((tmp_path / "raw" / "daisy").iterdir())) == 8


@pytest.mark.parametrize("top", ["flower_photos", "any-name"])
def test_tgz_under_a_top_folder_and_file_url(photos, tmp_path, top):
    archive = make_tgz(photos, tmp_path / "f.tgz", top)
    src = fetch(f"file://{archive}", tmp_path / "cache")
    assert src.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert extract(src, tmp_path / "raw").classes == CLASSES


def test_zip_at_root(photos, tmp_path):
    archive = tmp_path / "f.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(photos.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(photos).as_posix())
    assert extract(fetch(str(archive), tmp_path / "c"), tmp_path / "raw").classes == CLASSES


def test_zip_written_from_memory_its_members_without_file_type_bits(photos, tmp_path):
    """ZipFile.writestr stores mode 0o600 with no file-type bits: these are regular files, not special ones."""
    archive = tmp_path / "f.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(photos.rglob("*.jpg")):
            zf.writestr(f"flowers/{p.relative_to(photos).as_posix()}", p.read_bytes())
        link = zipfile.ZipInfo("flowers/daisy/link.jpg")
        link.external_attr = 0o120777 << 16  # a symbolic link stays refused
        zf.writestr(link, "/etc/passwd")
    report = extract(fetch(str(archive), tmp_path / "c"), tmp_path / "raw")
    assert report.classes == CLASSES and len(list((tmp_path / "raw" / "daisy").iterdir())) == 8
    assert report.refused == [{"path": "flowers/daisy/link.jpg", "reason": "links and special files are not extracted"}]


def test_an_archive_with_nothing_usable_names_itself_and_what_it_refused(tmp_path):
    archive = tmp_path / "evil.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../../evil.jpg")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DownloadError) as err:
        extract(fetch(str(archive), tmp_path / "c"), tmp_path / "raw")
    assert str(err.value) == (f"no class folders with images found in {archive} (expected <class>/<image> folders); "
                              "not extracted: ../../evil.jpg (path escapes the target folder)")


def test_escaping_entries_links_and_devices_are_refused(photos, tmp_path):
    archive = tmp_path / "evil.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(photos, arcname="flower_photos")
        data = b"owned"
        info = tarfile.TarInfo("flower_photos/../../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("flower_photos/daisy/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        dev = tarfile.TarInfo("flower_photos/daisy/null")
        dev.type = tarfile.CHRTYPE
        tar.addfile(dev)
    report = extract(fetch(str(archive), tmp_path / "c"), tmp_path / "out" / "raw")
    reasons = {r["path"]: r["reason"] for r in report.refused}
    assert "escapes" in reasons["flower_photos/../../escaped.txt"]
    assert "links" in reasons["flower_photos/daisy/link.jpg"] and "flower_photos/daisy/null" in reasons
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "out" / "raw" / "daisy" / "link.jpg").exists()


def test_wrong_checksum_fails_and_leaves_nothing(photos, tmp_path):
    archive = make_tgz(photos, tmp_path / "f.tgz")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch(str(archive), tmp_path / "c", expected_sha256="0" * 64)
    assert archive.exists()  # the user's own file is never deleted
    assert not [f for f in (tmp_path / "c").rglob("*") if f.is_file()]  # nothing cached to be reused


def test_truncated_archive_fails_cleanly(photos, tmp_path):
    archive = make_tgz(photos, tmp_path / "f.tgz")
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DownloadError, match="truncated or corrupt"):
        extract(fetch(str(cut), tmp_path / "c"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw")]


def test_no_class_folders(tmp_path):
    (tmp_path / "empty" / "docs").mkdir(parents=True)
    (tmp_path / "empty" / "docs" / "a.txt").write_text("x")
    with pytest.raises(DownloadError, match="no class folders"):
        find_class_root(tmp_path / "empty")


def test_unsupported_scheme():
    with pytest.raises(DownloadError, match="unsupported scheme"):
        local_path("ftp://example/x.tgz")


class FlakyHandler(SimpleHTTPRequestHandler):
    """Serves files with Range support; the first full request is cut off halfway."""

    cut_once = True
    ranges: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        FlakyHandler.ranges.append(rng or "")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if FlakyHandler.cut_once and not rng:
            FlakyHandler.cut_once = False
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(FlakyHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_download_resumes_and_verifies(photos, tmp_path, http_server):
    root, base = http_server
    archive = make_tgz(photos, root / "flower_photos.tgz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    FlakyHandler.cut_once, FlakyHandler.ranges = True, []
    src = fetch(f"{base}/flower_photos.tgz", tmp_path / "cache", expected_sha256=digest, retries=2)
    assert src.sha256 == digest and src.path.read_bytes() == archive.read_bytes()
    assert not FlakyHandler.cut_once  # the first attempt really was cut
    # the retry asked only for the bytes after the half it had: a resumed download, not a second full one
    half = (archive.stat().st_size) // 2
    assert FlakyHandler.ranges == ["", f"bytes={half}-"], FlakyHandler.ranges
    assert extract(src, tmp_path / "raw").classes == CLASSES


def test_http_404_is_one_clear_error(tmp_path, http_server):
    _, base = http_server
    with pytest.raises(DownloadError, match="404"):
        fetch(f"{base}/missing.tgz", tmp_path / "cache", retries=0)


def test_download_stage_checksum_error_then_fix(tmp_path):
    photos = make_photos(tmp_path / "p", per_class=3)
    archive = make_tgz(photos, tmp_path / "f.tgz")
    write_params(tmp_path, {"data": {"url": str(archive), "sha256": "1" * 64}})
    proc = run_stage("download", tmp_path, check=False)
    assert proc.returncode == 1 and "checksum mismatch" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data" / "raw").exists()
    write_params(tmp_path, {"data": {"url": str(archive), "sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}})
    run_stage("download", tmp_path)
    assert sorted(p.name for p in (tmp_path / "data" / "raw").iterdir()) == CLASSES


def test_source_record_for_archive(photos, tmp_path):
    archive = make_tgz(photos, tmp_path / "f.tgz")
    src = fetch(str(archive), tmp_path / "c")
    assert isinstance(src, Source) and src.kind == "archive" and src.size == archive.stat().st_size


# ---------------------------------------------------------------- what an archive is: its leading bytes


def tar_ending_with_a_zip(photos: Path, other: Path, out: Path, mode: str) -> Path:
    """A tar of photos whose last member is a zip of other photos (stored: its central directory ends the tar's
    data verbatim, also under gzip at level 0, so that zipfile.is_zipfile sees a zip at the end of the file)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(other.rglob("*.jpg")):
            zf.write(p, f"other_{p.relative_to(other).as_posix()}")
    data = buf.getvalue()
    with tarfile.open(out, mode, **({"compresslevel": 0} if mode == "w:gz" else {})) as tar:
        tar.add(photos, arcname="flower_photos")
        info = tarfile.TarInfo("flower_photos/extra.zip")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert zipfile.is_zipfile(out)  # what the old check asked first
    return out


@pytest.mark.parametrize("name, mode", [("f.tar", "w"), ("f.tgz", "w:gz")])
def test_a_tar_whose_last_member_is_a_zip_is_a_tar(photos, tmp_path, name, mode):
    archive = tar_ending_with_a_zip(photos, make_photos(tmp_path / "other", per_class=2), tmp_path / name, mode)
    report = extract(fetch(str(archive), tmp_path / "c"), tmp_path / "raw")
    assert report.classes == CLASSES  # the tar's own class folders, not the inner zip's
    assert report.refused == [{"path": "flower_photos/extra.zip",
                               "reason": "archives inside the archive are not extracted"}]


def test_archives_with_two_readings_or_none_are_one_line(photos, tmp_path):
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        for p in sorted(photos.rglob("*.jpg")):
            zf.write(p, p.relative_to(photos).as_posix())
    # a tar whose first member's name begins with a zip signature: both formats' leading bytes
    both = tmp_path / "both.tar"
    with tarfile.open(both, "w") as tar:
        info = tarfile.TarInfo("PK\x03\x04" + "x" * 20)
        tar.addfile(info, io.BytesIO(b""))
    # a zip with another zip appended: the central directory read is the second one's
    twice = tmp_path / "twice.zip"
    twice.write_bytes(zipped.getvalue() + zipped.getvalue())
    # data before a zip (a self-extractor): zipfile reads it, its first bytes say nothing
    prefixed = tmp_path / "setup.zip"
    prefixed.write_bytes(b"MZ" + bytes(510) + zipped.getvalue())
    for path, pattern in ((both, r"both\.tar: its leading bytes say both tar .* and zip"),
                          (twice, r"twice\.zip: .*before the zip's first member.*"),
                          (prefixed, r"setup\.zip is not a \.tgz, \.tar or \.zip archive \(it begins with 4d 5a 00")):
        with pytest.raises(DownloadError, match=pattern) as err:
            fetch(str(path), tmp_path / "c")
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------- class folders whose names are not UTF-8

LATIN1 = "ros\udce9s"  # the bytes b"ros\xe9s" as Python names them on Linux (surrogateescape)


def zip_with_raw_names(photos: Path, out: Path, raw: bytes) -> Path:
    """A zip whose roses folder is named with the raw bytes `raw` and without the UTF-8 flag, as Info-ZIP writes
    names on Linux (Python's ZipFile writes non-ASCII names only as flagged UTF-8, so the bytes are patched)."""
    placeholder = b"R" * len(raw)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(photos.rglob("*.jpg")):
            rel = p.relative_to(photos).as_posix().replace("roses/", placeholder.decode() + "/")
            zf.write(p, f"flowers/{rel}")
    out.write_bytes(buf.getvalue().replace(b"flowers/" + placeholder + b"/", b"flowers/" + raw + b"/"))
    return out


def test_a_zip_without_the_utf8_flag_keeps_utf8_names(photos, tmp_path):
    archive = zip_with_raw_names(photos, tmp_path / "f.zip", "rosés".encode())
    report = extract(fetch(str(archive), tmp_path / "c"), tmp_path / "raw")
    assert "rosés" in report.classes and len(list((tmp_path / "raw" / "rosés").iterdir())) == 8  # not 'ros├⌐s'


def test_a_class_folder_whose_name_is_not_utf8_is_one_line_naming_it(photos, tmp_path):
    folder = Path(os.fsdecode(os.fsencode(photos) + b"/ros\xe9s"))
    (photos / "roses").rename(folder)
    latin_tar = tmp_path / "latin1.tar"
    with tarfile.open(latin_tar, "w", format=tarfile.GNU_FORMAT, encoding="utf-8") as tar:
        tar.add(photos, arcname="flower_photos")  # the name's bytes as they are on disk
    sources = {"folder": photos, "tar": latin_tar,
               "zip": zip_with_raw_names(make_photos(tmp_path / "p2"), tmp_path / "f.zip", b"ros\xe9s")}
    for kind, source in sources.items():
        out = tmp_path / f"raw-{kind}"
        with pytest.raises(DownloadError) as err:
            extract(fetch(str(source), tmp_path / "c"), out)
        line = str(err.value)
        assert "\n" not in line and line.startswith(f"{source}: class folder 'ros\\xe9s' (8 files): its name is not "
                                                    "valid UTF-8"), (kind, line)
        assert not out.exists()  # nothing half-made, nothing renamed
