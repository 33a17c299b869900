"""Atomic JSON writes and tolerant reads, shared by stages and the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowerpipe.pipeline.outputs import atomic


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON to a temp file beside path, then rename it into place (a crash leaves the old file)."""
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    """Read JSON, or return default when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default
