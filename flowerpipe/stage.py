"""What every stage script shares: quiet logging, params, atomic JSON writes, one-line errors."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowerpipe.params import Params, ParamsError, load


def quiet_tensorflow(preload: bool = True) -> None:
    """Silence TensorFlow's C++ and Python log noise unless FLOWERPIPE_VERBOSE is set."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if os.environ.get("FLOWERPIPE_VERBOSE"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*ran out of data.*")
    warnings.filterwarnings("ignore", module="tensorflow.lite.python.interpreter")  # the converter's own use
    warnings.filterwarnings("ignore", category=UserWarning, module="keras.src.trainers.data_adapters")
    if preload and "tensorflow" not in sys.modules:
        # The oneDNN notice is printed before absl logging starts, whatever the log level: hide fd 2 meanwhile.
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON to a temp file beside path, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str | Path, default: Any = None) -> Any:
    """Read JSON, or return default when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


class StageError(RuntimeError):
    """A failure the user can fix; printed as one line without a traceback."""


def run(main: Callable[[Params], None], params_file: str = "params.yaml", tensorflow: bool = True) -> None:
    """Run a stage's main(params); known errors become one line on stderr and exit code 1."""
    quiet_tensorflow(preload=tensorflow)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        main(load(os.environ.get("FLOWERPIPE_PARAMS", params_file)))
    except (ParamsError, StageError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # a library error that names its file is still one line
        if exc.__class__.__module__.startswith("flowerpipe"):
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        raise
