"""Fetch the photo archive (http, file:// or local path), prove it whole, and extract its class folders safely."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from flowerpipe.data import IMAGE_SUFFIXES, archive
from flowerpipe.data.archive import Caps
from flowerpipe.data.http import CHUNK, DownloadError, Limits, download
from flowerpipe.pipeline.outputs import atomic, clean_stale

__all__ = ["DownloadError", "Caps", "Limits", "Source", "ExtractReport", "fetch", "extract", "find_class_root",
           "local_path", "sha256_file", "IMAGE_SUFFIXES"]


@dataclass
class Source:
    """What was fetched: a local archive or folder, its size and sha256."""

    path: Path
    kind: str  # "archive" or "folder"
    sha256: str
    size: int


@dataclass
class ExtractReport:
    """What extraction kept, what it refused and how many hidden entries it ignored."""

    classes: list[str]
    refused: list[dict[str, str]] = field(default_factory=list)
    hidden: int = 0


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(root: Path) -> str:
    """A sha256 over every regular file's relative path and content (links not followed), in sorted order."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.is_symlink()):
        h.update(p.relative_to(root).as_posix().encode("utf-8", "surrogateescape") + b"\0"
                 + bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def local_path(url: str) -> Path | None:
    """The local path a URL names (file:// or plain path), or None for http(s)."""
    try:
        parsed = urlparse(url)
    except ValueError as exc:
        raise DownloadError(f"data.url: {url!r} is not a valid URL ({exc})") from None
    if parsed.scheme in ("http", "https"):
        if not parsed.hostname:
            raise DownloadError(f"data.url: {url!r} has no host")
        return None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise DownloadError(f"data.url: unsupported scheme {parsed.scheme!r} in {url!r} "
                            "(use http(s), file:// or a path)")
    return Path(url).expanduser()


def _checksum(path: Path, expected: str) -> str:
    digest = sha256_file(path)
    if expected and digest != expected:
        raise DownloadError(f"checksum mismatch for {path}: expected sha256 {expected}, got {digest} "
                            "(truncated or wrong file; set data.sha256 to '' to only record it)")
    return digest


def fetch(url: str, cache_dir: Path, expected_sha256: str = "", retries: int = 5, limits: Limits | None = None,
          caps: Caps | None = None) -> Source:
    """A verified local archive or folder for url; a download replaces the cached archive only once proved whole."""
    limits = limits or Limits(retries=retries)
    caps = caps or Caps()
    path = local_path(url)
    if path is not None:
        if not path.exists():
            raise DownloadError(f"data.url: {path} does not exist")
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
            return Source(path, "folder", sha256_tree(path), size)
        if not path.is_file():
            raise DownloadError(f"data.url: {path} is not a regular file or a folder (devices, pipes and sockets "
                                "are refused)")
        digest = _checksum(path, expected_sha256)
        archive.verify(path, caps)
        return Source(path, "archive", digest, path.stat().st_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / (Path(urlparse(url).path).name or "archive")
    if path.exists() and expected_sha256 and sha256_file(path) == expected_sha256:
        return Source(path, "archive", expected_sha256, path.stat().st_size)
    part = path.with_name(path.name + ".part")
    download(url, part, limits)
    try:
        digest = _checksum(part, expected_sha256)
        archive.verify(part, caps)
    except DownloadError:
        part.unlink(missing_ok=True)  # a bad download is never resumed, and never replaces a good cached one
        raise
    os.replace(part, path)
    return Source(path, "archive", digest, path.stat().st_size)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.is_symlink() and not p.name.startswith((".", "__")))


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())


def find_class_root(root: Path) -> Path:
    """The folder whose subfolders are the classes: the root or below single top folders."""
    if not root.is_dir():
        raise DownloadError(f"{root} is not a folder of class folders (does it exist? run the download stage)")
    current = root
    for _ in range(4):
        dirs = _visible_dirs(current)
        if any(_has_images(d) for d in dirs):
            return current
        if len(dirs) != 1:
            break
        current = dirs[0]
    raise DownloadError(f"no class folders with images found in {root} (expected <class>/<image> folders)")


def _check_class_names(refused: list[dict[str, str]], top: tuple[str, ...], where: str) -> None:
    """Stop with one line when photos were refused because their class folder's own name is not UTF-8 (a file so
    named inside a class is refused and listed); drop the names kept for this check."""
    bad: dict[str, list[str]] = {}
    for r in refused:
        parts = PurePosixPath(r.pop("_name", "")).parts
        if len(parts) > len(top) + 1 and parts[:len(top)] == top \
                and archive.refusal(parts[len(top)], True) == archive.NOT_UTF8:
            bad.setdefault(parts[len(top)], []).append(parts[-1])
    for name, files in sorted(bad.items()):
        if any(PurePosixPath(f).suffix.lower() in IMAGE_SUFFIXES for f in files):
            archive.bad_class_folder(name, where, len(files))


def extract(source: Source, out: Path, caps: Caps | None = None) -> ExtractReport:
    """Extract or copy source's class folders into out: staged beside it, then swapped in (never a mix)."""
    caps = caps or Caps()
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp, atomic(out) as staged:
        unpacked = Path(tmp) / "unpacked"
        unpacked.mkdir()
        if source.kind == "folder":
            refused, hidden = archive.copy_tree(find_class_root(source.path), unpacked, caps)
        else:
            refused = archive.extract(source.path, archive.verify(source.path, caps), unpacked, caps)
            hidden = 0
        try:
            root = find_class_root(unpacked)
        except DownloadError:  # name what the user gave, not the staging folder, and what was left out of it
            left_out = "; ".join(f"{r['path']} ({r['reason']})" for r in refused[:3])
            raise DownloadError(f"no class folders with images found in {source.path} (expected <class>/<image> "
                                "folders)" + (f"; not extracted: {left_out}" if left_out else "")) from None
        _check_class_names(refused, root.relative_to(unpacked).parts, str(source.path))
        staged.mkdir()
        classes = []
        for d in _visible_dirs(root):
            files = [p for p in d.rglob("*") if p.is_file()]
            visible = [p for p in files if not any(part.startswith(".") for part in p.relative_to(d).parts)]
            hidden += len(files) - len(visible)
            if not visible:
                continue
            classes.append(d.name)
            os.replace(d, staged / d.name)
        if len(classes) < 2:
            raise DownloadError(f"found {len(classes)} class folder(s) with files in {source.path}; need at least 2")
    return ExtractReport(classes, refused, hidden)
