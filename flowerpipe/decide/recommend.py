"""What to ship on this machine: per goal, the best format above the accuracy floors, its margin, or a tie.

Reads the evaluate and benchmark records of a run. A format is `below_floor` when its test accuracy is under
`deploy.min_accuracy_ratio` times the trained model's, or its top-1 agreement with the trained model is under
`serve.min_agreement`; it stays in the tables and is never recommended or auto-served. Two formats whose timed
rounds overlap (the best's slowest round against the runner-up's fastest) are a tie, and the decision says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowerpipe.formats.registry import REFERENCE, precision_of

GOALS = {"latency": "lowest latency", "throughput": "most images/s", "budget": "most images/s in budget",
         "size": "smallest file"}


@dataclass(frozen=True)
class Floors:
    """The accuracy floors a format must meet to be recommended or auto-served."""

    min_accuracy_ratio: float = 0.99
    min_agreement: float = 0.995


def floor_reason(name: str, scored: dict, floors: Floors) -> str:
    """Why a format may not ship ('' when it may): under a floor, or never scored (unless it computes in float32,
    the trained model's own precision)."""
    ref = scored.get(REFERENCE, {})
    row = scored.get(name)
    if not row or row.get("status") != "ok":
        if row is None and precision_of(name) == "float32":
            return ""
        return (row or {}).get("reason") or "not scored by evaluate"
    if name == REFERENCE:
        return ""
    if ref.get("status") == "ok" and row["accuracy"] < floors.min_accuracy_ratio * ref["accuracy"] - 1e-12:
        return (f"test accuracy {row['accuracy']:.4f} is under {floors.min_accuracy_ratio:g} x the trained model's "
                f"{ref['accuracy']:.4f}")
    agreement = row.get("top1_agreement", 0.0)
    if agreement < floors.min_agreement:
        return f"top-1 agreement {agreement:.4f} is under serve.min_agreement {floors.min_agreement:g}"
    return ""


def _status(why: str, row: dict) -> dict:
    """ok; below_floor (scored, under a floor); or excluded (not scored here: skipped, or never evaluated)."""
    if not why:
        return {"status": "ok"}
    return {"status": "below_floor" if row.get("status") == "ok" else "excluded", "reason": why}


def _cells(results: dict, name: str, device: str) -> dict[int, dict]:
    """A format's timed cells on a device, by batch size (numeric)."""
    cells = results.get(name, {}).get(device, {})
    return dict(sorted((int(k[1:]), c) for k, c in cells.items() if c.get("status") == "ok"))


def _spread(cell: dict, key: str) -> tuple[float, float]:
    """(lowest, highest) of a figure over the benchmark's rounds (the median alone for a one-round cell)."""
    values = cell.get(f"{key}_rounds") or [cell[key]]
    return min(values), max(values)


def _choice(entries: list[dict], key: str, lower_is_better: bool, scored: dict) -> dict:
    """The best entry, its runner-up, the margin between them and whether their rounds overlap (a tie)."""
    ranked = sorted(entries, key=lambda e: e[key] if lower_is_better else -e[key])
    best = ranked[0]
    out = {**best, "ranking": [e["format"] for e in ranked]}
    row = scored.get(best["format"], {})
    out.update(accuracy=row.get("accuracy"), agreement=row.get("top1_agreement"))
    if len(ranked) > 1:
        second = ranked[1]
        out["runner_up"], out["runner_up_value"] = second["format"], second[key]
        out["margin"] = round(second[key] / best[key] if lower_is_better else best[key] / second[key], 3)
        b_lo, b_hi = best.get("spread", (best[key], best[key]))
        tied = [e["format"] for e in ranked[1:]
                if (e.get("spread", (e[key],) * 2)[0] <= b_hi if lower_is_better
                    else e.get("spread", (e[key],) * 2)[1] >= b_lo)]
        out["tie"], out["tied_with"] = bool(tied), tied
    return out


def decide(evaluate: dict, benchmark: dict, floors: Floors = Floors(), budget_ms: float = 100.0) -> dict:
    """Per device timed: the format (and batch size) for each goal among those above the floors."""
    scored = evaluate.get("formats", {})
    results = benchmark.get("results", {})
    names = sorted(set(scored) | set(results))
    marks = {n: floor_reason(n, scored, floors) for n in names}
    out: dict = {"floors": {"min_accuracy_ratio": floors.min_accuracy_ratio, "min_agreement": floors.min_agreement,
                            "latency_budget_ms": budget_ms},
                 "reference": {"format": REFERENCE, "accuracy": scored.get(REFERENCE, {}).get("accuracy")},
                 "formats": {n: _status(why, scored.get(n, {})) for n, why in marks.items()},
                 "devices": {}}
    ok = [n for n in names if not marks[n]]
    devices = sorted({d for n in ok for d in results.get(n, {}) if _cells(results, n, d)})
    for device in devices:
        latency, throughput, budget = [], [], []
        for n in ok:
            cells = _cells(results, n, device)
            if not cells:
                continue
            first = min(cells)
            latency.append({"format": n, "batch_size": first, "ms": cells[first]["latency_ms_median"],
                            "p99_ms": cells[first]["latency_ms_p99"],
                            "spread": _spread(cells[first], "latency_ms_median")})
            top = max(cells, key=lambda b: cells[b]["throughput_ips"])
            throughput.append({"format": n, "batch_size": top, "img_s": cells[top]["throughput_ips"],
                               "spread": _spread(cells[top], "throughput_ips")})
            within = {b: c for b, c in cells.items() if c["latency_ms_p99"] <= budget_ms}
            if within:
                b = max(within, key=lambda k: within[k]["throughput_ips"])
                budget.append({"format": n, "batch_size": b, "img_s": within[b]["throughput_ips"],
                               "p99_ms": within[b]["latency_ms_p99"], "spread": _spread(within[b], "throughput_ips")})
        goals = {"latency": _choice(latency, "ms", True, scored), "throughput": _choice(throughput, "img_s", False,
                                                                                          scored)}
        goals["budget"] = (_choice(budget, "img_s", False, scored) if budget
                           else {"none": f"no format answers within p99 {budget_ms:g} ms on the {device}"})
        out["devices"][device] = goals
    sizes = [{"format": n, "mb": scored[n]["size_mb"]} for n in ok if scored.get(n, {}).get("size_mb")]
    if sizes:
        out["size"] = _choice(sizes, "mb", True, scored)
    return out


def decide_for(p) -> dict:
    """The decision for a pipeline's params, from its evaluate and benchmark records (one line when one is missing)."""
    from pathlib import Path

    from flowerpipe.jsonio import read_json

    reports = Path(p.paths.reports)
    evaluate, benchmark = read_json(reports / "evaluate.json", None), read_json(reports / "benchmark.json", None)
    if not evaluate or not benchmark:
        missing = "evaluate" if not evaluate else "benchmark"
        raise FileNotFoundError(f"no {missing} record in {reports}: run dvc repro {missing}")
    return decide(evaluate, benchmark, Floors(p.deploy.min_accuracy_ratio, p.serve.min_agreement),
                  p.deploy.latency_budget_ms)


DIGITS = {"ms": 2, "img/s": 1, "MB": 1}


def _line(goal: str, c: dict, unit: str, key: str) -> str:
    if "none" in c:
        return f"  {GOALS[goal]:24s} none: {c['none']}"
    where = f" b{c['batch_size']}" if "batch_size" in c else ""  # the batch size
    acc = (f", acc {c['accuracy']:.3f}, agree {c['agreement']:.3f}" if c.get("accuracy") is not None
           and c.get("agreement") is not None else "")
    n = DIGITS[unit]
    head = f"  {GOALS[goal]:24s} {c['format']}{where}: {c[key]:.{n}f} {unit}{acc}"
    if "runner_up" not in c:
        return head + " (the only candidate)"
    if c["tie"]:
        return head + f"; a tie with {', '.join(c['tied_with'])} (timed rounds overlap)"
    return head + f"; next {c['runner_up']} {c['runner_up_value']:.{n}f} {unit} ({c['margin']:.2f}x)"


def render(d: dict) -> str:
    """The decision as text: one line per goal and device, then the formats under a floor."""
    f = d["floors"]
    ref = d["reference"]
    lines = ["What to ship on this machine",
             f"(floors: test accuracy >= {f['min_accuracy_ratio']:g} x the trained model's "
             f"{ref['accuracy'] if ref['accuracy'] is not None else '?'}, top-1 agreement >= {f['min_agreement']:g}; "
             f"budget: p99 <= {f['latency_budget_ms']:g} ms)",
             "(bN: at batch N; acc: test accuracy; agree: top-1 agreement with the trained model; next: the runner-up)"]
    for device, goals in d["devices"].items():
        lines.append(f"{device.upper()}:")
        lines.append(_line("latency", goals["latency"], "ms", "ms"))
        lines.append(_line("throughput", goals["throughput"], "img/s", "img_s"))
        lines.append(_line("budget", goals["budget"], "img/s", "img_s"))
    if "size" in d:
        lines.append(_line("size", d["size"], "MB", "mb"))
    if not d["devices"]:
        lines.append("  nothing timed yet above the floors (run dvc repro benchmark)")
    below = {n: r["reason"] for n, r in d["formats"].items() if r["status"] == "below_floor"}
    if below:
        lines.append("Below a floor (never recommended or auto-served):")
        lines += [f"  {n}: {why}" for n, why in below.items()]
    return "\n".join(lines)


def headline(d: dict) -> dict:
    """Numbers for `dvc exp show` (no strings): the CPU's shipped batch-1 ms, best img/s, smallest MB, budget img/s."""
    cpu = d["devices"].get("cpu", {})
    out = {}
    if "ms" in cpu.get("latency", {}):
        out["ship_b1_ms"] = round(cpu["latency"]["ms"], 2)
    if "img_s" in cpu.get("throughput", {}):
        out["ship_img_s"] = round(cpu["throughput"]["img_s"], 1)
    if "img_s" in cpu.get("budget", {}):
        out["ship_budget_img_s"] = round(cpu["budget"]["img_s"], 1)
    if "mb" in d.get("size", {}):
        out["ship_mb"] = round(d["size"]["mb"], 2)
    return out
