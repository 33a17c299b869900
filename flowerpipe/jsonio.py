"""Atomic JSON writes and tolerant reads, shared by stages and the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowerpipe.errors import UserError
from flowerpipe.pipeline.outputs import atomic


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON to a temp file beside path, then rename it into place (a crash leaves the old file)."""
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    """Read JSON, or return default when the file does not exist; a file that is not JSON is one line naming it."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a JSON file flowerpipe wrote ({exc}); write it again (dvc repro, or the "
                        "stage that writes it)") from None
