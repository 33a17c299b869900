"""HTTP download into a .part file: resumed with Range, retried on drops and 5xx, bounded by a deadline and a stall."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from flowerpipe.errors import UserError

log = logging.getLogger(__name__)
CHUNK = 1 << 20
RETRIED_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(UserError):
    """The archive could not be fetched, verified or extracted."""


@dataclass(frozen=True)
class Limits:
    """How long a download may take in all, and without a byte, and how often it is retried."""

    retries: int = 5
    timeout_s: float = 3600.0
    stall_s: float = 60.0


class _Retry(Exception):
    """A failure worth another attempt (a drop, a stall, a 5xx answer)."""


def _content_range_total(header: str) -> int | None:
    """N from 'bytes */N' or 'bytes a-b/N' (None when unknown)."""
    total = header.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _content_range_start(header: str) -> int | None:
    """a from 'bytes a-b/N' (None when absent or unreadable)."""
    first = header.removeprefix("bytes ").partition("-")[0].strip()
    return int(first) if first.isdigit() else None


def _attempt(url: str, part: Path, limits: Limits, deadline: float) -> None:
    """One request: append what arrives to part; raise _Retry for what another attempt may fix."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, stream=True, timeout=(min(30.0, limits.stall_s), limits.stall_s), headers=headers) as r:
        if r.status_code == 416:  # nothing after `have`: complete only if the server's length is exactly that
            if have and _content_range_total(r.headers.get("Content-Range", "")) == have:
                return
            part.unlink(missing_ok=True)
            raise _Retry(f"the server refused to resume a stale partial file ({have} bytes): starting over")
        if r.status_code in RETRIED_STATUS:
            raise _Retry(f"the server answered {r.status_code} {r.reason}")
        if r.status_code >= 400:
            raise DownloadError(f"download of {url} failed: the server answered {r.status_code} {r.reason}")
        resumed_at = _content_range_start(r.headers.get("Content-Range", "")) if r.status_code == 206 else 0
        if have and resumed_at == 0:
            have = 0  # the server ignored Range (200), or sent a 206 from byte 0: the whole file again
        elif have and resumed_at != have:
            part.unlink(missing_ok=True)
            raise _Retry(f"the server resumed elsewhere than byte {have} "
                         f"({r.headers.get('Content-Range', 'no Content-Range')!r}): starting over")
        length = r.headers.get("Content-Length")
        total = int(length) + have if length and length.isdigit() else None
        with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                            desc="download", disable=None) as bar:
            # read1: what has arrived, up to CHUNK; a dropped connection keeps every byte received
            while chunk := r.raw.read1(CHUNK, decode_content=True):
                f.write(chunk)
                bar.update(len(chunk))
                if time.monotonic() > deadline:
                    raise DownloadError(f"download of {url} took longer than data.timeout_s={limits.timeout_s:g}s "
                                        f"({f.tell()} bytes so far, kept and resumed by the next run)")
        got = part.stat().st_size
        if total is not None and got < total:
            raise _Retry(f"connection closed after {got} of {total} bytes")
        if total is not None and got > total:
            part.unlink()
            raise DownloadError(f"download of {url}: the server sent {got} bytes after announcing {total}")


def download(url: str, part: Path, limits: Limits) -> None:
    """Fetch url into part (resuming what part holds), or raise DownloadError with one line."""
    deadline = time.monotonic() + limits.timeout_s
    attempt = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _attempt(url, part, limits, deadline)
            return
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
                requests.exceptions.URLRequired, urllib3.exceptions.LocationParseError) as exc:
            raise DownloadError(f"data.url: {url!r} is not a valid URL ({exc})") from None
        except requests.ConnectionError as exc:
            if "NameResolutionError" in repr(exc) or "Failed to resolve" in str(exc):
                host = requests.utils.urlparse(url).hostname
                raise DownloadError(f"download of {url} failed: cannot resolve host {host!r} (no network, or a "
                                    "wrong data.url)") from None
            reason = f"connection failed or dropped ({exc.__class__.__name__})"
        except (requests.Timeout, urllib3.exceptions.ReadTimeoutError):
            reason = f"no data for data.stall_s={limits.stall_s:g}s"
        except (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError) as exc:
            reason = f"connection dropped ({exc.__class__.__name__})"
        except _Retry as exc:
            reason = str(exc)
        # a drop after progress starts the count again: a flaky link finishes (within data.timeout_s)
        attempt = 1 if part.exists() and part.stat().st_size > before else attempt + 1
        if attempt > limits.retries:
            raise DownloadError(f"download of {url} failed after {limits.retries} retries: {reason}")
        wait = min(2**attempt, 30)
        if time.monotonic() + wait > deadline:
            raise DownloadError(f"download of {url} did not finish within data.timeout_s={limits.timeout_s:g}s: "
                                f"{reason}")
        log.warning("download interrupted (%s); resuming in %ss (retry %d/%d)", reason, wait, attempt,
                    limits.retries)
        backoff(wait)


def backoff(seconds: float) -> None:
    """Wait before the next attempt."""
    time.sleep(seconds)
