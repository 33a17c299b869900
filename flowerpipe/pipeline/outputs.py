"""Where a stage may delete and replace: checked before anything is touched, and replaced without a gap."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from flowerpipe.errors import UserError


def _inside(a: Path, b: Path) -> bool:
    """Whether a is b or below it."""
    return a == b or b in a.parents


def check_outputs(outputs: dict[str, str | Path], inputs: dict[str, str | Path] | None = None,
                  project: Path | None = None) -> dict[str, Path]:
    """Resolve the outputs a stage replaces (param name -> path); refuse any that could destroy something else.

    Each must lie inside the project (the working folder), be neither the project nor a parent of it, and
    neither contain nor lie inside another output or an input.
    """
    root = (project or Path.cwd()).resolve()
    resolved = {k: (root / Path(v).expanduser()).resolve() for k, v in outputs.items()}
    sources = {k: (root / Path(v).expanduser()).resolve() for k, v in (inputs or {}).items() if str(v)}
    for key, path in resolved.items():
        if not _inside(path, root) or path == root:
            where = "the project folder itself" if path == root else "outside the project folder"
            raise UserError(f"{key}: {outputs[key]!s} is {where} ({root}); a stage replaces this path, so it must "
                            "be a path inside the project")
        top = path.relative_to(root).parts[0]
        if top in (".git", ".dvc", ".dvcignore", ".gitignore", "dvc.yaml", "dvc.lock", "params.yaml"):
            raise UserError(f"{key}: {outputs[key]!s} would replace the project's own {top}")
        for other, opath in resolved.items():
            if other != key and _inside(opath, path):
                raise UserError(f"{key}: {outputs[key]!s} contains {other} ({outputs[other]!s}); outputs must not "
                                "overlap")
        for name, source in sources.items():
            if _inside(source, path) or _inside(path, source):
                raise UserError(f"{key}: {outputs[key]!s} overlaps {name} ({inputs[name]!s}); the stage would "
                                "delete its own input")
    return resolved


def clean_stale(out: Path) -> None:
    """Remove the temp folders an interrupted run left beside out (.<name>.* siblings)."""
    if out.parent.is_dir():
        for stale in out.parent.glob(f".{out.name}.*"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)


def _replace_dir(new: Path, out: Path) -> None:
    """Put folder new at out: the previous out is moved aside first, so either it or new is always in place."""
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic(out: str | Path) -> Iterator[Path]:
    """The one write-then-rename: a temp path beside out (a file or a folder, with out's suffix, which some writers
    read) to write at; it takes out's name when the block ends, a folder through _replace_dir so that out is never
    missing, and is removed when the block raises, so a crash or Ctrl-C leaves the previous out (or none)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp{out.suffix}")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and not tmp.is_symlink():
            _replace_dir(tmp, out)
        else:
            os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
