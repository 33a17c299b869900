"""A stage reads only the params dvc.yaml declares for it: anything else raises, so a missing dep cannot hide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from flowerpipe.params import ParamsError

ALWAYS = ("paths",)  # dvc.yaml interpolates paths.* into deps and outs, so a change there changes the stage
# Keys whose `auto` is resolved from others (params.Model): reading one reads those too.
RESOLVED_FROM = {f"model.{k}": ("model.weights", "model.arch") for k in ("image_size", "width", "middle_blocks")}


class UndeclaredParam(ParamsError):
    """A stage read a params.yaml key that its dvc.yaml entry does not list."""


def _stages(dvc_yaml: Path) -> dict[str, Any]:
    try:
        return (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"{dvc_yaml}: cannot read the pipeline ({exc})") from None


def _keys(entry: dict[str, Any]) -> set[str]:
    keys: set[str] = set()
    for item in entry.get("params", []) or []:
        if isinstance(item, str):
            keys.add(item)
        else:  # {"other.yaml": [keys]}: only params.yaml is ours
            keys.update(k for f, ks in item.items() if f == "params.yaml" for k in (ks or []))
    return keys


def declared(dvc_yaml: Path, stage: str) -> set[str]:
    """The params keys dvc.yaml lists for a stage (a section name covers all of its keys)."""
    stages = _stages(dvc_yaml)
    if stage not in stages:
        raise ParamsError(f"{dvc_yaml}: no stage named {stage!r}")
    return _keys(stages[stage])


def sections(dvc_yaml: Path) -> set[str]:
    """Every params.yaml section some stage of the pipeline reads (the file's known top-level keys)."""
    return {key.split(".")[0] for entry in _stages(dvc_yaml).values() for key in _keys(entry)} | set(ALWAYS)


def _covered(key: str, allowed: frozenset[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1))


class Guarded:
    """A read-only view of a params model that raises UndeclaredParam for keys the stage did not declare."""

    def __init__(self, model: BaseModel, allowed: set[str] | frozenset[str], stage: str, prefix: str = ""):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_allowed", frozenset(allowed) | frozenset(ALWAYS))
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_prefix", prefix)

    def _check(self, key: str) -> None:
        for source in RESOLVED_FROM.get(key, ()):
            if not _covered(source, self._allowed):
                raise UndeclaredParam(f"stage {self._stage!r} reads params.yaml key {key!r}, whose auto value "
                                      f"comes from {source!r}, which its dvc.yaml entry does not list under params")
        if not _covered(key, self._allowed):
            raise UndeclaredParam(f"stage {self._stage!r} reads params.yaml key {key!r}, which its dvc.yaml entry "
                                  "does not list under params (add it there, or stop reading it)")

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._model, name)
        if name in (getattr(self._model, "model_extra", None) or {}):
            self._check(f"{self._prefix}{name}")  # a format's raw section: read it through section()
            return value
        if name not in type(self._model).model_fields:
            return value  # a method; model_dump* are checked below
        key = f"{self._prefix}{name}"
        if isinstance(value, BaseModel):
            if not any(a.startswith(key + ".") for a in self._allowed):
                self._check(key)  # a section with no declared key under it must itself be declared
            return Guarded(value, self._allowed, self._stage, key + ".")
        self._check(key)
        return value

    def section(self, name: str, cls: type[BaseModel]) -> Any:
        """A format's section (Params.section), guarded like the others."""
        key = f"{self._prefix}{name}"
        if not any(a.startswith(key + ".") for a in self._allowed):
            self._check(key)
        return Guarded(self._model.section(name, cls), self._allowed, self._stage, key + ".")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("params are read-only")

    def __reduce__(self):
        """Pickled as the same guarded view (Ray Train sends a stage's params to its workers)."""
        return Guarded, (self._model, self._allowed, self._stage, self._prefix)

    def model_dump(self, *, exclude: set[str] | None = None, **kw: Any) -> dict[str, Any]:
        """The section as a dict; every field dumped must be declared."""
        for name in type(self._model).model_fields:
            if name not in (exclude or set()):
                self._check(f"{self._prefix}{name}")
        return self._model.model_dump(exclude=exclude, **kw)

    def model_dump_json(self, *, exclude: set[str] | None = None, **kw: Any) -> str:
        """The section as JSON; every field dumped must be declared."""
        self.model_dump(exclude=exclude)
        return self._model.model_dump_json(exclude=exclude, **kw)

    def __repr__(self) -> str:
        return f"Guarded({self._prefix or 'params'} for stage {self._stage!r})"
