"""Archives proved whole before use (read to their true end, checks verified), then extracted within limits."""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from flowerpipe.data.http import DownloadError

NESTED = (".tar", ".tgz", ".gz", ".bz2", ".xz", ".zip", ".7z", ".rar", ".zst")
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, ValueError)


@dataclass(frozen=True)
class Caps:
    """How much an archive or folder may hold, named by the params that set them."""

    max_bytes: int = 4096 << 20
    max_files: int = 200_000

    def check(self, files: int, size: int, what: str) -> None:
        """Stop with the param to raise when files or bytes exceed the caps."""
        if files > self.max_files:
            raise DownloadError(f"{what} holds more than data.max_files={self.max_files} files; raise it if you "
                                "trust the source")
        if size > self.max_bytes:
            raise DownloadError(f"{what} expands to more than data.max_extract_mb={self.max_bytes >> 20} MB; raise "
                                "it if you trust the source")


def safe_rel(name: str) -> PurePosixPath | None:
    """A normalised relative path inside the target, or None if it would escape."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return p


def refusal(name: str, is_regular: bool) -> str:
    """Why a member is not extracted ('' to extract it)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    if safe_rel(name) is None:
        return "path escapes the target folder"
    if not is_regular:
        return "links and special files are not extracted"
    if name.lower().endswith(NESTED):
        return "archives inside the archive are not extracted"
    return ""


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return " (it is an HTML page: the server answered with a web page, not the archive; check data.url)"
    return ""


def _verify_tar(path: Path, caps: Caps) -> None:
    with tarfile.open(path) as tar:
        files = size = 0
        for m in tar:
            files += 1
            size += m.size if m.isfile() else 0
            caps.check(files, size, str(path))
        # tar ends with at least two zero blocks; what follows the last member must be exactly zeros, and reading
        # it to the end makes gzip/bz2/xz verify their own checksums and lengths
        tar.fileobj.seek(tar.offset)
        tail = 0
        while block := tar.fileobj.read(1 << 16):
            if block.count(0) != len(block):
                raise DownloadError(f"{path}: unexpected data after the end of the tar archive")
            tail += len(block)
        if tail < 1024:
            raise DownloadError(f"{path}: the tar archive ends without its end-of-archive marker (truncated)")


def _verify_zip(path: Path, caps: Caps) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if any(i.flag_bits & 0x1 for i in infos):
            raise DownloadError(f"{path}: the zip archive is encrypted (password-protected members are not supported)")
        caps.check(len(infos), sum(i.file_size for i in infos), str(path))
        bad = zf.testzip()
        if bad is not None:
            raise DownloadError(f"{path}: archive is truncated or corrupt (bad CRC in {bad})")


def verify(path: Path, caps: Caps) -> str:
    """'tar' or 'zip' once the whole archive has been read and checked, else one DownloadError line."""
    try:
        if zipfile.is_zipfile(path):
            _verify_zip(path, caps)
            return "zip"
        if tarfile.is_tarfile(path):
            _verify_tar(path, caps)
            return "tar"
    except DownloadError:
        raise
    except (NotImplementedError, RuntimeError) as exc:  # zip: unsupported compression or encryption
        raise DownloadError(f"{path}: cannot read this zip archive ({exc})") from None
    except _CORRUPT as exc:
        raise DownloadError(f"{path}: archive is truncated or corrupt ({exc.__class__.__name__}: {exc})") from None
    raise DownloadError(f"{path} is not a .tgz, .tar or .zip archive{_sniff(path)}")


def _copy_capped(src, dst: Path, budget: list[int], caps: Caps, what: str) -> None:
    """Copy a stream, counting against the byte cap (a zip's stated sizes may lie)."""
    with open(dst, "wb") as out:
        while chunk := src.read(1 << 20):
            budget[0] += len(chunk)
            caps.check(0, budget[0], what)
            out.write(chunk)


def extract(path: Path, kind: str, dest: Path, caps: Caps) -> list[dict[str, str]]:
    """Extract a verified archive's regular files into dest; return the members refused, with the reason."""
    refused: list[dict[str, str]] = []
    try:
        if kind == "tar":
            with tarfile.open(path) as tar:
                members = []
                for m in tar:
                    why = refusal(m.name, m.isfile() or m.isdir())
                    if why:
                        refused.append({"path": m.name.encode("utf-8", "backslashreplace").decode(), "reason": why})
                    else:
                        members.append(m)
                tar.extractall(dest, members=members, filter="data")
            return refused
        budget = [0]
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                rel = safe_rel(info.filename)
                if info.is_dir() and rel is not None:
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                    continue
                why = refusal(info.filename, not stat.S_IFMT(mode) or stat.S_ISREG(mode))  # no type bits: a file
                if why:
                    refused.append({"path": info.filename, "reason": why})
                else:
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src:
                        _copy_capped(src, dest / rel, budget, caps, str(path))
        return refused
    except DownloadError:
        raise
    except _CORRUPT as exc:
        raise DownloadError(f"{path}: archive is truncated or corrupt ({exc.__class__.__name__}: {exc})") from None


def copy_tree(src: Path, dest: Path, caps: Caps) -> tuple[list[dict[str, str]], int]:
    """Copy a local folder's regular files (links not followed, hidden entries skipped): (refused, hidden count)."""
    refused: list[dict[str, str]] = []
    hidden = files = size = 0
    stack = [src]
    while stack:
        folder = stack.pop()
        for entry in sorted(folder.iterdir()):
            rel = entry.relative_to(src).as_posix()
            why = refusal(rel, True)
            if entry.name.startswith("."):
                hidden += 1
            elif why and why != "archives inside the archive are not extracted":
                refused.append({"path": rel.encode("utf-8", "backslashreplace").decode(), "reason": why})
            elif entry.is_symlink():
                refused.append({"path": rel, "reason": "symbolic links are not followed"})
            elif entry.is_dir():
                stack.append(entry)
            elif entry.is_file():
                files += 1
                size += entry.stat().st_size
                caps.check(files, size, str(src))
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(entry, dest / rel)
            else:
                refused.append({"path": rel, "reason": "links and special files are not extracted"})
    return refused, hidden
