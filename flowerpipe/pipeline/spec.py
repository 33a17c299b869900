"""What a stage script declares as its module-level STAGE (a Spec), which flowerpipe/pipeline/dag.py writes into
dvc.yaml; stage scripts reach it as stage.Spec (flowerpipe/pipeline/stage.py re-exports it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

NO_CACHE = {"cache": False}  # an out kept in git rather than DVC's cache: small JSON and CSV records
MODEL_PARAMS = ("model.arch", "model.image_size", "model.width", "model.middle_blocks", "model.weights")  # the build
SERVED_PARAMS = ("model.name", "model.image_size", "export.version")  # finding and feeding the served model


@dataclass(frozen=True)
class FromFormats:
    """A list the dvc.yaml generator fills in from the formats' declarations (flowerpipe/formats/*.py: FORMAT)."""

    what: str


MODELS = FromFormats("models")  # every format's model outputs
RECORDS = FromFormats("records")  # every format's conversion record (<paths.reports>/<its stage>.json), not train's
CPU_MODELS = FromFormats("cpu_models")  # the model outputs of the formats that run on the CPU
CPU_RECORDS = FromFormats("cpu_records")  # their conversion records
WANTED = FromFormats("wanted")  # the params keys that choose which variants the conversion stages build


def record(name: str) -> str:
    """A stage's JSON record as dvc.yaml writes it: ${paths.reports}/<name>.json."""
    return f"${{paths.reports}}/{name}.json"


@dataclass(frozen=True, kw_only=True)
class Spec:
    """What a stage script declares as its module-level STAGE, by keyword: its dvc.yaml entry but for `cmd` and its
    code deps, which dag.py makes from the script's name and import closure. A format's conversion stage declares none:
    its FORMAT does (flowerpipe/formats/base.py)."""

    order: int  # its place in dvc.yaml, in the DAG's order (the formats' conversion stages stand at 60)
    deps: Sequence[str | FromFormats] = ()  # the data it reads, as ${paths.*}
    params: Sequence[str | FromFormats] = ()  # exactly the params.yaml keys it reads (a whole section by its name)
    outs: Sequence[str | dict] = ()  # what it writes; {path: NO_CACHE} for a small record kept in git
    metrics: Sequence[str | dict] = ()  # the few headline numbers `dvc exp show` compares
    plots: Sequence[dict] = ()  # its entries in dvc.yaml's top-level plots
