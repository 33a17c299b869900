"""Every model format, found as the modules of flowerpipe/formats that declare a FORMAT; nothing else names them.

`find(p, name)` resolves one name from the paths alone (plus model.name and export.version for the
SavedModel), so a stage that loads one format depends on no other format's params; `variants(p)` lists
what the params ask the conversion stages to build, for the stages that go over all of them.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

import flowerpipe.formats as _package
from flowerpipe.formats.base import Format, FormatError, Runner, Skipped, Variant
from flowerpipe.jsonio import read_json
from flowerpipe.params import Params, ParamsError

# For flowerpipe.pipeline.dag's import closure: this module imports every format module of its package.
__discovers__ = "flowerpipe.formats"
_NOT_FORMATS = {"base", "registry"}


@functools.cache
def modules() -> dict[str, ModuleType]:
    """family -> its module, in report order (FORMAT.order, then family)."""
    found = []
    for info in pkgutil.iter_modules(_package.__path__):
        if info.name in _NOT_FORMATS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{_package.__name__}.{info.name}")
        if isinstance(getattr(module, "FORMAT", None), Format):
            found.append(module)
    found.sort(key=lambda m: (m.FORMAT.order, m.FORMAT.family))
    return {m.FORMAT.family: m for m in found}


def formats() -> list[Format]:
    """Every format's declaration, in report order."""
    return [m.FORMAT for m in modules().values()]


def _names() -> dict[str, tuple[Format, str]]:
    return {f.name(o): (f, o) for f in formats() for o in f.options}


ALL_NAMES = tuple(_names())  # every name a variant can have, in report order
REFERENCE = "keras"  # the trained model: every other variant is scored against it


def precision_of(name: str) -> str:
    """What a variant computes in: float32, bfloat16, float16 or int8 ('' for an unknown name)."""
    f, option = _names().get(name, (None, ""))
    return f.precision.get(option, "") if f else ""


def _by_precision(precision: str) -> tuple[str, ...]:
    """CPU-runnable variants computing in this precision, in serve_rank order."""
    chosen = [(f.serve_rank, i, f.name(o)) for i, (f, o) in enumerate(_names().values())
              if f.precision.get(o) == precision and not f.devices.get("cpu")]
    return tuple(name for *_, name in sorted(chosen))


# Formats that compute in float32 like the trained model (serve.format auto picks among these).
FLOAT_FORMATS = _by_precision("float32")
# Reduced-precision formats that may be near-lossless: serve.format auto takes one only when the evaluate
# stage measured its top-1 agreement with the trained model at serve.min_agreement or above.
NEAR_FLOAT_FORMATS = _by_precision("bfloat16")
# Where each format's building stage records status, seconds and size.
CONVERT_RECORDS = tuple(dict.fromkeys(f.stage for f in formats() if f.stage and f.stage != "train"))


def declaration(family: str) -> Format:
    """One family's declaration, or a one-line error."""
    module = modules().get(family)
    if module is None:
        raise FormatError(f"unknown model format family {family!r}; expected one of: {', '.join(modules())}")
    return module.FORMAT


def savedmodel_dir(p: Params) -> Path:
    """models/serving/<name>/<version>."""
    return find(p, "savedmodel").path


def find(p: Params, name: str) -> Variant:
    """The variant called name, or a one-line error listing the valid names."""
    entry = _names().get(name)
    if entry is None:
        raise FormatError(f"unknown model format {name!r}; expected one of: {', '.join(ALL_NAMES)}")
    fmt, option = entry
    return Variant(name, fmt.family, option, fmt.path(p, option))


def find_built(p: Params, name: str) -> Variant:
    """find(), and one line with the conversion stage's reason when that stage skipped this variant here."""
    variant = find(p, name)
    record = conversion_status(p).get(name, {})
    if not variant.path.exists() and record.get("status") == "skipped":
        raise FormatError(f"{name} was not built here: {record.get('reason', '')}")
    return variant


def variants(p: Params, family: str | None = None) -> list[Variant]:
    """The variants the params ask for (all, or one family's), in ALL_NAMES order."""
    chosen = {f.name(o) for f in formats() if family in (None, f.family) for o in f.wanted(p)}
    return [find(p, n) for n in ALL_NAMES if n in chosen]


def runtimes(p: Params) -> list[Variant]:
    """benchmark.runtimes: 'all' (every variant the params ask for) or the names listed."""
    listed = p.benchmark.runtimes
    return variants(p) if listed == "all" else [find(p, name) for name in listed]


def wanted_params() -> list[str]:
    """The params keys variants() reads, for the stages that call it."""
    return [k for f in formats() for k in f.wanted_params]


def built(p: Params, names: tuple[str, ...] = ALL_NAMES) -> list[str]:
    """Which of these formats have a model file on disk now."""
    return [n for n in names if find(p, n).path.exists()]


def conversion_status(p: Params) -> dict[str, dict]:
    """Each variant's conversion record (status, seconds, size_mb or reason) from the conversion stages."""
    out: dict[str, dict] = {}
    for name in CONVERT_RECORDS:
        record = read_json(Path(p.paths.reports) / f"{name}.json", {}) or {}
        nested = record.get("variants")  # convert_tensorrt nests its per-precision records
        out.update(nested if isinstance(nested, dict) else record)
    return {k: v for k, v in out.items() if isinstance(v, dict)}


def check(p: Params) -> None:
    """Every format section valid, and every format name in params known: one line per problem."""
    raw = getattr(p, "_model", p)  # the whole file, also where a stage's guarded view would hide it
    sections = {f.section: f for f in formats() if f.section}
    problems = [f"params.yaml: {key}: unknown key" for key in raw.model_extra or {} if key not in sections]
    for fmt in sections.values():
        try:
            fmt.settings_of(raw)
        except ParamsError as exc:
            problems.append(str(exc))
    listed = {"benchmark.runtimes": [] if raw.benchmark.runtimes == "all" else raw.benchmark.runtimes,
              "headline.formats": raw.headline.formats, "infer.format": [raw.infer.format],
              "serve.format": [] if raw.serve.format == "auto" else [raw.serve.format]}
    for key, names in listed.items():
        bad = [n for n in names if n not in ALL_NAMES or (key == "headline.formats" and n == REFERENCE)]
        if bad:
            problems.append(f"params.yaml: {key}: unknown{' or reference' if key.startswith('head') else ''} "
                            f"format {', '.join(map(repr, bad))} (expected one of: {', '.join(ALL_NAMES)})")
    if problems:
        raise ParamsError("\n".join(problems))


def detect(path: Path) -> tuple[str, str]:
    """(family, option) of a model file by its suffix and name, or a one-line error."""
    for fmt in formats():
        if path.suffix in fmt.suffixes:
            return fmt.family, fmt.option_of(path)
    raise FormatError(f"{path}: not a model file this server knows ({', '.join(suffixes())}, or a SavedModel)")


def suffixes() -> list[str]:
    """Every model file suffix some format declares."""
    return [s for f in formats() for s in f.suffixes]


def platform(name: str) -> str:
    """The KServe V2 platform of a variant name (the name itself when no format declares it)."""
    entry = _names().get(name)
    return entry[0].platform if entry else name


def unavailable(variant: Variant, device: str) -> str:
    """Why a variant cannot run on a device here, known without loading it ('' when it may run)."""
    reason = declaration(variant.family).devices.get(device, f"unknown device {device!r}")
    if reason or device != "gpu":
        return reason
    return "" if _gpus() else "no NVIDIA GPU on this machine"


@functools.cache
def _gpus() -> tuple[str, ...]:
    from flowerpipe.measure.devices import gpu_names

    return tuple(gpu_names())


def load(variant: Variant, device: str = "cpu", threads: int = 0) -> Runner:
    """Load a variant's runner for a device (raises Skipped where it cannot run here)."""
    reason = unavailable(variant, device)
    if reason:
        raise Skipped(reason)
    return modules()[variant.family].load(variant.path, variant.option, device, threads)
