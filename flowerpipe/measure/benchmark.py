"""The benchmark stage's work: every runtime x device x batch size timed in rounds, each cell a share of the peak of
its own device and precision; the plots' tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flowerpipe.formats.base import Variant
from flowerpipe.formats.registry import check, conversion_status, declaration, runtimes, unavailable
from flowerpipe.jsonio import read_json
from flowerpipe.measure import doctor, peaks
from flowerpipe.measure.harness import (
    Budget,
    achieved_gflops,
    environment,
    merge_rounds,
    model_flops,
    overhead,
    run_isolated,
    task_for,
)
from flowerpipe.measure.timing_lock import timing_lock
from flowerpipe.params import Params


def plan(chosen: list[Variant], devices: list[str], converted: dict[str, dict]) -> list[tuple[Variant, str, str]]:
    """(variant, device, why it is skipped or '') for every cell: skipped by its conversion stage, or unavailable."""
    planned = []
    for v in chosen:
        for device in devices:
            rec = converted.get(v.name, {})
            reason = ((rec.get("reason") or "skipped by its conversion stage") if rec.get("status") == "skipped"
                      else unavailable(v, device))
            planned.append((v, device, reason))
    return planned


def time_rounds(todo: list[tuple[Variant, str]], p: Params, budget: Budget) -> dict[tuple[str, str], list[dict]]:
    """Each (runtime, device)'s cells per round: every runtime in turn, then again, so that a slow minute of the
    machine hits them all alike."""
    b = p.benchmark
    timed: dict[tuple[str, str], list[dict]] = {}
    for r in range(b.rounds):
        for v, device in todo:
            if b.rounds > 1:
                print(f"round {r + 1}/{b.rounds}: {v.name} {device}", flush=True)
            timed.setdefault((v.name, device), []).append(run_isolated(task_for(
                v, device, b.batch_sizes, p.model.image_size, budget, b.threads, b.inter_op_threads)))
    return timed


def with_shares(cells: dict[str, dict], flops: float, peak: dict, device: str, precision: str) -> dict[str, dict]:
    """The cells in numeric batch order, each timed one with its GFLOP/s and its share of the device's peak."""
    cells = dict(sorted(cells.items(), key=lambda kv: int(kv[0])))  # batch sizes in numeric order
    for n, cell in cells.items():
        if cell["status"] == "ok":
            gflops = achieved_gflops(flops, int(n), cell["latency_ms_median"])
            cell["gflops"] = round(gflops, 2)
            fraction, cell["peak"] = peaks.share(gflops, peak.get(device, {}), device, precision)
            if fraction is not None:
                cell["fraction_of_peak"] = round(fraction, 4)
    return cells


def cell_line(name: str, device: str, n: str, cell: dict) -> str:
    """One cell as a line of the stage's output: latency (and its rounds' spread), images/s, share of peak."""
    share = f"{cell['fraction_of_peak']:6.1%} of {cell['peak']}" if "fraction_of_peak" in cell else ""
    spread = (f" (rounds {min(cell['latency_ms_median_rounds']):.2f}-"
              f"{max(cell['latency_ms_median_rounds']):.2f})" if cell.get("rounds", 1) > 1 else "")
    summary = (f"{cell['latency_ms_median']:9.2f} ms{spread}  {cell['throughput_ips']:9.1f} img/s  {share}"
               if cell["status"] == "ok" else f"skipped: {cell['reason']}")
    return f"{name:20s} {device} b={n:<3} {summary}"


def run(p: Params) -> tuple[dict, pd.DataFrame]:
    """Time every cell under the machine-wide timing lock: (the benchmark record, one row per cell)."""
    check(p)  # a wrong format name or section stops here, listing the valid ones
    b = p.benchmark
    budget = Budget(b.warmup, b.iterations, b.min_seconds, b.max_seconds)
    chosen = runtimes(p)
    converted = conversion_status(p)
    results: dict[str, dict] = {}
    rows = []
    with timing_lock("benchmark"):  # never two timed runs at once on this machine, in sweeps too
        # Each cell is a share of the peak of its own device and of the precision its model computes in
        precision = {v.name: declaration(v.family).precision.get(v.option, "float32") for v in chosen}
        peak = {device: peaks.measure(device, keys) for device, keys in peaks.needed(
            (device, precision[v.name]) for v in chosen for device in b.devices if not unavailable(v, device)).items()}
        flops = model_flops(Path(p.paths.model), p.model.image_size)
        planned = plan(chosen, b.devices, converted)
        timed = time_rounds([(v, device) for v, device, reason in planned if not reason], p, budget)
        for v, device, reason in planned:
            cells = ({str(n): {"status": "skipped", "reason": reason} for n in b.batch_sizes} if reason
                     else merge_rounds(timed[(v.name, device)]))
            cells = with_shares(cells, flops, peak, device, precision[v.name])
            for n, cell in cells.items():
                rows.append({"runtime": v.name, "device": device, "batch_size": int(n), **cell})
                print(cell_line(v.name, device, n, cell), flush=True)
            results.setdefault(v.name, {})[device] = {f"b{n}": c for n, c in cells.items()}
        harness = overhead(budget)
    record = {"model_gflop_per_image": round(flops / 1e9, 4), "peaks": peak, "overhead": harness,
              "environment": environment(b.threads), "doctor": doctor.report(), "results": results}
    return record, pd.DataFrame(rows)


def write_plots(table: pd.DataFrame, plots: Path, evaluate_record: Path) -> None:
    """Throughput per runtime, batch size (and device where several), and accuracy against batch-1 latency."""
    plots.mkdir(parents=True, exist_ok=True)
    if len(table):  # runtimes in the registry's order, each one's batch sizes in numeric order
        order = {name: i for i, name in enumerate(dict.fromkeys(table.runtime))}
        table = table.assign(_order=table.runtime.map(order)).sort_values(
            ["_order", "device", "batch_size"], kind="stable").drop(columns="_order")
    ok = table[table.status == "ok"].copy() if len(table) else table
    several = len(ok) and ok.device.nunique() > 1
    if len(ok):
        ok["cell"] = [f"{r.runtime} b{r.batch_size}" + (f" {r.device}" if several else "") for r in ok.itertuples()]
    cols = ["cell", "runtime", "device", "batch_size", "throughput_ips", "latency_ms_median"]
    (ok[cols] if len(ok) else pd.DataFrame(columns=cols)).to_csv(plots / "benchmark.csv", index=False)
    accuracy = (read_json(evaluate_record, {}) or {}).get("formats", {})
    rows = []
    if len(ok):
        first = ok[ok.batch_size == ok.batch_size.min()]
        for r in first.sort_values("latency_ms_median").drop_duplicates("runtime").itertuples():
            acc = accuracy.get(r.runtime, {}).get("accuracy")
            if acc is not None:
                rows.append({"format": r.runtime if not several else f"{r.runtime} {r.device}",
                             "latency_ms": r.latency_ms_median, "accuracy": acc})
    pd.DataFrame(rows, columns=["format", "latency_ms", "accuracy"]).to_csv(plots / "accuracy_latency.csv",
                                                                            index=False)
