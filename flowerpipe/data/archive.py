"""Archives proved whole before use (read to their true end, checks verified), then extracted within limits."""

from __future__ import annotations

import bz2
import gzip
import lzma
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


def shown(name: str) -> str:
    """A name for a message or a record: bytes that are not UTF-8 (surrogate-escaped, as Python gives them)
    shown escaped as \\xNN, the rest as it is."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def zip_name(info: zipfile.ZipInfo) -> str:
    """A zip member's name. Without the UTF-8 flag the zip format says cp437, but zips made on Linux and macOS
    store the file system's bytes: names that are valid UTF-8 are read as UTF-8, the others keep their bytes
    (surrogate-escaped, as tar and the OS give them), so they are refused as not UTF-8, never renamed."""
    if info.flag_bits & 0x800:
        return info.filename
    return info.orig_filename.encode("cp437").decode("utf-8", "surrogateescape")


def refusal(name: str, is_regular: bool) -> str:
    """Why a member is not extracted ('' to extract it)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return NOT_UTF8
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
    with path.open("rb") as f:
        first = f.read(8)
    return f" (it begins with {first.hex(' ')})" if first else " (it is empty)"


COMPRESSED = {b"\x1f\x8b": ("gzip", gzip.open), b"BZh": ("bzip2", bz2.open),
              b"\xfd7zXZ\x00": ("xz", lzma.open)}
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a first member's local header, or an empty zip's end record


def _is_tar_header(block: bytes) -> bool:
    """Whether a 512-byte block is a tar header: 'ustar' at byte 257 (POSIX, GNU), or an old v7 header whose
    checksum adds up."""
    if len(block) < 512:
        return False
    if block[257:262] == b"ustar":
        return True
    try:
        stored = int(block[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * 32 + sum(block[156:512]) and any(block[:100])


def kind_of(path: Path) -> str:
    """'tar' or 'zip' from the file's leading bytes (a compressed stream is opened to read the tar header inside):
    one DownloadError line for a file they do not name, or name twice."""
    with path.open("rb") as f:
        head = f.read(512)
    is_zip = head.startswith(ZIP_MAGIC)
    for magic, (name, opener) in COMPRESSED.items():
        if head.startswith(magic):
            try:
                with opener(path, "rb") as f:
                    inner = f.read(512)
            except _CORRUPT as exc:
                raise DownloadError(f"{path}: archive is truncated or corrupt ({exc.__class__.__name__}: {exc})") \
                    from None
            if _is_tar_header(inner):
                return "tar"
            what = "a zip archive" if inner.startswith(ZIP_MAGIC) else "no tar archive"
            raise DownloadError(f"{path}: {name}-compressed, but it holds {what} (expected a .tgz, .tar.bz2 or "
                                ".tar.xz, a .tar or a .zip)")
    if _is_tar_header(head):
        if is_zip:
            raise DownloadError(f"{path}: its leading bytes say both tar ('ustar' at byte 257) and zip ('PK' at byte "
                                "0): an ambiguous file, refused")
        return "tar"
    if is_zip:
        return "zip"
    raise DownloadError(f"{path} is not a .tgz, .tar or .zip archive{_sniff(path)}")


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
        if infos and min(i.header_offset for i in infos) != 0:  # zipfile skips what comes first; a zip at 0 cannot
            raise DownloadError(f"{path}: the central directory at its end describes members that begin at byte "
                                f"{min(i.header_offset for i in infos)}, not the zip at byte 0: data before the zip's "
                                "first member (two archives in one file?), refused")
        bad = zf.testzip()
        if bad is not None:
            raise DownloadError(f"{path}: archive is truncated or corrupt (bad CRC in {bad})")


def verify(path: Path, caps: Caps) -> str:
    """'tar' or 'zip' (what the leading bytes say) once the whole archive has been read and checked, else one
    DownloadError line. A tar whose last member is a zip is a tar, though zipfile would find a zip at its end."""
    kind = kind_of(path)
    try:
        if kind == "zip":
            _verify_zip(path, caps)
        else:
            _verify_tar(path, caps)
        return kind
    except DownloadError:
        raise
    except (NotImplementedError, RuntimeError) as exc:  # zip: unsupported compression or encryption
        raise DownloadError(f"{path}: cannot read this zip archive ({exc})") from None
    except zipfile.BadZipFile as exc:
        if "not a zip file" in str(exc):  # it begins as a zip, but zipfile finds no end record
            raise DownloadError(f"{path}: the zip archive is truncated or corrupt (no central directory at its "
                                "end)") from None
        raise DownloadError(f"{path}: archive is truncated or corrupt (BadZipFile: {exc})") from None
    except _CORRUPT as exc:
        raise DownloadError(f"{path}: archive is truncated or corrupt ({exc.__class__.__name__}: {exc})") from None


NOT_UTF8 = "file name is not valid UTF-8"


def _refused(name: str, why: str) -> dict[str, str]:
    """A refused member as recorded (its name shown escaped); a name that is not UTF-8 keeps its own under "_name"
    for the class-folder check (extract() removes it)."""
    return {"path": shown(name), "reason": why, **({"_name": name} if why == NOT_UTF8 else {})}


def bad_class_folder(name: str, where: str, files: int) -> None:
    """Stop with one line: a class folder whose name is not UTF-8 is neither dropped nor renamed silently."""
    raise DownloadError(f"{where}: class folder '{shown(name)}' ({files} files): its name is not valid UTF-8 (bytes "
                        "shown as \\xNN); a class name is recorded in the manifest and in every model's labels, so "
                        "rename the folder to UTF-8 (e.g. convmv -f latin1 -t utf8 -r --notest <folder>) and run again")


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
                        refused.append(_refused(m.name, why))
                    else:
                        members.append(m)
                tar.extractall(dest, members=members, filter="data")
            return refused
        budget = [0]
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                mode, name = info.external_attr >> 16, zip_name(info)
                rel = safe_rel(name)
                if info.is_dir() and rel is not None and not refusal(name, True):
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                    continue
                why = refusal(name, not stat.S_IFMT(mode) or stat.S_ISREG(mode))  # no type bits: a file
                if why:
                    refused.append(_refused(name, why))
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
                if entry.is_dir() and not entry.is_symlink() and folder == src:
                    bad_class_folder(entry.name, str(src), sum(1 for p in entry.rglob("*") if p.is_file()))
                refused.append(_refused(rel, why))
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
