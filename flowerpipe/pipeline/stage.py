"""The stage runner: quiet logging, params restricted to what dvc.yaml declares, one-line errors. What a stage
script declares as its STAGE (Spec, from flowerpipe/pipeline/spec.py) is re-exported here: a script needs one import."""

from __future__ import annotations

import inspect
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flowerpipe.errors import UserError, exit_code
from flowerpipe.jsonio import read_json, write_json  # noqa: F401  (re-exported: stage scripts use stage.write_json)
from flowerpipe.params import Params, ParamsError, load
from flowerpipe.pipeline.guard import Guarded, declared, sections
from flowerpipe.pipeline.spec import (  # noqa: F401  (re-exported: stage scripts declare stage.Spec(...))
    CPU_MODELS,
    CPU_RECORDS,
    MODEL_PARAMS,
    MODELS,
    NO_CACHE,
    RECORDS,
    SERVED_PARAMS,
    WANTED,
    FromFormats,
    Spec,
    record,
)
from flowerpipe.quiet import quiet_tensorflow

StageError = UserError


def stage_params(name: str, params_file: str | Path, dvc_yaml: Path) -> Params:
    """params.yaml, validated, as a view that lets stage `name` read only the keys dvc.yaml lists for it.

    A format's section is validated by the stages that read it; a top-level key that no stage reads is refused here.
    """
    p = load(params_file)
    unknown = sorted(set(p.model_extra or {}) - sections(dvc_yaml))
    if unknown:
        raise ParamsError("\n".join(f"{params_file}: {key}: unknown key" for key in unknown))
    return Guarded(p, declared(dvc_yaml, name), name)  # type: ignore[return-value]


def run(main: Callable[[Params], None], params_file: str = "params.yaml", tensorflow: bool = True) -> None:
    """Run a stage's main(params) under errors.exit_code: a user's error is one line and exit 1, Ctrl-C 130."""
    script = Path(inspect.getsourcefile(main) or sys.argv[0]).resolve()
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM unwinds like Ctrl-C: temp folders are removed, worker processes stopped. SIGINT is set too: a shell
    # without job control starts a background command (`make test &`, nohup, CI runners) with SIGINT ignored.
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
    start = time.perf_counter()

    def stage() -> None:
        quiet_tensorflow(preload=tensorflow)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)
        main(stage_params(script.stem, os.environ.get("FLOWERPIPE_PARAMS", params_file),
                          script.parents[1] / "dvc.yaml"))
        print(f"stage {script.stem} done in {time.perf_counter() - start:.1f}s", flush=True)

    try:
        code = exit_code(stage, interrupted=f"stage {script.stem} interrupted; its previous outputs are kept")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if os.environ.get("FLOWERPIPE_TRACE_IMPORTS"):
            _trace_imports(script, Path(os.environ["FLOWERPIPE_TRACE_IMPORTS"]))
    if code:
        sys.exit(code)


def _trace_imports(script: Path, folder: Path) -> None:
    """Write the project files this stage imported (tests compare them with its dvc.yaml deps)."""
    root = script.parents[1]
    files = {Path(f).resolve() for m in list(sys.modules.values()) if (f := getattr(m, "__file__", None))}
    mine = sorted(f.relative_to(root).as_posix() for f in files if f.is_relative_to(root) and f.suffix == ".py")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{script.stem}.txt").write_text("\n".join(mine) + "\n")


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)
