"""Fetch the photo archive (http, file:// or local path), verify it and extract it safely."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import requests
import urllib3
from tqdm import tqdm

log = logging.getLogger(__name__)
CHUNK = 1 << 20
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DownloadError(RuntimeError):
    """The archive could not be fetched, verified or extracted."""


@dataclass
class Source:
    """What was fetched: a local archive or folder, its size and sha256."""

    path: Path
    kind: str  # "archive" or "folder"
    sha256: str
    size: int


@dataclass
class ExtractReport:
    """What extraction kept and what it refused."""

    classes: list[str]
    refused: list[dict[str, str]] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(root: Path) -> str:
    """A sha256 over every file's relative path and content, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def local_path(url: str) -> Path | None:
    """The local path a URL names (file:// or plain path), or None for http(s)."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise DownloadError(f"data.url: unsupported scheme {parsed.scheme!r} in {url!r} "
                            "(use http(s), file:// or a path)")
    return Path(url).expanduser()


def _http_download(url: str, part: Path, retries: int, timeout: float = 60.0) -> None:
    """Stream url into part, resuming with HTTP Range after an interruption."""
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, stream=True, timeout=timeout, headers=headers) as r:
                if r.status_code == 416:  # already complete
                    return
                r.raise_for_status()
                if have and r.status_code != 206:
                    have = 0  # server ignored Range: start over
                total = int(r.headers.get("Content-Length", 0)) + have if r.headers.get("Content-Length") else None
                with open(part, "ab" if have else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc="download", disable=None
                ) as bar:
                    # read1: what has arrived, up to CHUNK; a dropped connection keeps every byte received
                    while chunk := r.raw.read1(CHUNK, decode_content=True):
                        f.write(chunk)
                        bar.update(len(chunk))
                got = part.stat().st_size
                if total is not None and got < total:
                    raise requests.ConnectionError(f"connection closed after {got} of {total} bytes")
                return
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError) as exc:
            attempt += 1
            if attempt > retries:
                raise DownloadError(f"download of {url} failed after {retries} retries: {exc}") from None
            wait = min(2**attempt, 30)
            log.warning("download interrupted (%s); resuming in %ss (retry %d/%d)", exc, wait, attempt, retries)
            time.sleep(wait)
        except requests.HTTPError as exc:
            raise DownloadError(f"download of {url} failed: {exc}") from None


def fetch(url: str, cache_dir: Path, expected_sha256: str = "", retries: int = 5) -> Source:
    """Return a verified local archive or folder for url, downloading into cache_dir if needed."""
    path = local_path(url)
    if path is not None:
        if not path.exists():
            raise DownloadError(f"data.url: {path} does not exist")
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            return Source(path, "folder", sha256_tree(path), size)
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        name = Path(urlparse(url).path).name or "archive"
        path = cache_dir / name
        if not (path.exists() and expected_sha256 and sha256_file(path) == expected_sha256):
            part = cache_dir / (name + ".part")
            _http_download(url, part, retries)
            os.replace(part, path)
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256:
        if path.parent == cache_dir:
            path.unlink()  # a bad download must not be reused
        raise DownloadError(
            f"checksum mismatch for {path}: expected sha256 {expected_sha256}, got {digest} "
            "(truncated or wrong file; set data.sha256 to '' to only record it)"
        )
    return Source(path, "archive", digest, path.stat().st_size)


def _safe_rel(name: str) -> PurePosixPath | None:
    """A normalised relative path inside the target, or None if it would escape."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return p


def _extract_tar(archive: Path, dest: Path, refused: list[dict[str, str]]) -> None:
    """Extract regular files and folders only; refuse links, devices and escaping paths."""
    with tarfile.open(archive) as tar:
        members = []
        for m in tar:
            if _safe_rel(m.name) is None:
                refused.append({"path": m.name, "reason": "path escapes the target folder"})
            elif not (m.isfile() or m.isdir()):
                refused.append({"path": m.name, "reason": "links and special files are not extracted"})
            else:
                members.append(m)
        tar.extractall(dest, members=members, filter="data")


def _extract_zip(archive: Path, dest: Path, refused: list[dict[str, str]]) -> None:
    """Extract a zip's regular files; refuse symlinks and escaping paths."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            rel = _safe_rel(info.filename)
            mode = info.external_attr >> 16
            if rel is None:
                refused.append({"path": info.filename, "reason": "path escapes the target folder"})
            elif mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                refused.append({"path": info.filename, "reason": "links and special files are not extracted"})
            elif info.is_dir():
                (dest / rel).mkdir(parents=True, exist_ok=True)
            else:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest / rel, "wb") as out:
                    shutil.copyfileobj(src, out)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())


def find_class_root(root: Path) -> Path:
    """The folder whose subfolders are the classes: the root or below single top folders."""
    current = root
    for _ in range(4):
        dirs = _visible_dirs(current)
        if any(_has_images(d) for d in dirs):
            return current
        if len(dirs) != 1:
            break
        current = dirs[0]
    raise DownloadError(f"no class folders with images found in {root} (expected <class>/<image> folders)")


def extract(source: Source, out: Path) -> ExtractReport:
    """Extract or copy source's class folders into out, atomically (temp folder, then rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    refused: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        unpacked = Path(tmp) / "unpacked"
        staged = Path(tmp) / "staged"
        unpacked.mkdir()
        staged.mkdir()
        if source.kind == "folder":
            root = find_class_root(source.path)
        else:
            try:
                if zipfile.is_zipfile(source.path):
                    _extract_zip(source.path, unpacked, refused)
                elif tarfile.is_tarfile(source.path):
                    _extract_tar(source.path, unpacked, refused)
                else:
                    raise DownloadError(f"{source.path} is not a .tgz, .tar or .zip archive")
            except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
                raise DownloadError(f"{source.path}: archive is truncated or corrupt ({exc})") from None
            root = find_class_root(unpacked)
        classes = []
        for d in _visible_dirs(root):
            files = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
            if not files:
                continue
            classes.append(d.name)
            for f in files:
                target = staged / d.name / f.relative_to(d)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target) if source.kind == "folder" else os.replace(f, target)
        if len(classes) < 2:
            raise DownloadError(f"found {len(classes)} class folder(s) in {root}; need at least 2")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    return ExtractReport(classes, refused)
