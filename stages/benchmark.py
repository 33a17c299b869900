"""benchmark stage: latency and throughput for every runtime x device x batch size, against a measured matmul peak."""

from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage

STAGE = stage.Spec(
    order=80,
    deps=[stage.MODELS, stage.RECORDS, stage.record("evaluate")],
    params=[*stage.SERVED_PARAMS, stage.WANTED, "benchmark", "headline.formats"],
    outs=[{"${paths.plots}/benchmark.csv": stage.NO_CACHE}, {"${paths.plots}/accuracy_latency.csv": stage.NO_CACHE},
          {stage.record("benchmark"): stage.NO_CACHE}],
    metrics=[{"${paths.metrics}/benchmark.json": stage.NO_CACHE}],
    plots=[{"Throughput (images/s) by runtime and batch size": {
        "template": "bar_horizontal", "x": "throughput_ips", "x_label": "images/s",
        "y_label": "runtime and batch size", "y": {"${paths.plots}/benchmark.csv": "cell"}}}])


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    import pandas as pd

    from flowerpipe.decide import headline
    from flowerpipe.formats.registry import check, conversion_status, declaration, runtimes, unavailable
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
        planned, todo = [], []
        for v in chosen:
            for device in b.devices:
                rec = converted.get(v.name, {})
                reason = ((rec.get("reason") or "skipped by its conversion stage") if rec.get("status") == "skipped"
                          else unavailable(v, device))
                planned.append((v, device, reason))
                if not reason:
                    todo.append((v, device))
        # Rounds: every runtime in turn, then again, so that a slow minute of the machine hits them all alike
        timed: dict[tuple[str, str], list[dict]] = {}
        for r in range(b.rounds):
            for v, device in todo:
                if b.rounds > 1:
                    print(f"round {r + 1}/{b.rounds}: {v.name} {device}", flush=True)
                timed.setdefault((v.name, device), []).append(run_isolated(task_for(
                    v, device, b.batch_sizes, p.model.image_size, budget, b.threads, b.inter_op_threads)))
        for v, device, reason in planned:
            if reason:
                cells = {str(n): {"status": "skipped", "reason": reason} for n in b.batch_sizes}
            else:
                cells = merge_rounds(timed[(v.name, device)])
            cells = dict(sorted(cells.items(), key=lambda kv: int(kv[0])))  # batch sizes in numeric order
            for n, cell in cells.items():
                if cell["status"] == "ok":
                    gflops = achieved_gflops(flops, int(n), cell["latency_ms_median"])
                    cell["gflops"] = round(gflops, 2)
                    fraction, cell["peak"] = peaks.share(gflops, peak.get(device, {}), device, precision[v.name])
                    if fraction is not None:
                        cell["fraction_of_peak"] = round(fraction, 4)
                rows.append({"runtime": v.name, "device": device, "batch_size": int(n), **cell})
                share = f"{cell['fraction_of_peak']:6.1%} of {cell['peak']}" if "fraction_of_peak" in cell else ""
                spread = (f" (rounds {min(cell['latency_ms_median_rounds']):.2f}-"
                          f"{max(cell['latency_ms_median_rounds']):.2f})" if cell.get("rounds", 1) > 1 else "")
                summary = (f"{cell['latency_ms_median']:9.2f} ms{spread}  {cell['throughput_ips']:9.1f} img/s  {share}"
                           if cell["status"] == "ok" else f"skipped: {cell['reason']}")
                print(f"{v.name:20s} {device} b={n:<3} {summary}", flush=True)
            results.setdefault(v.name, {})[device] = {f"b{n}": c for n, c in cells.items()}
        harness = overhead(budget)
    record = {"model_gflop_per_image": round(flops / 1e9, 4), "peaks": peak, "overhead": harness,
              "environment": environment(b.threads), "doctor": doctor.report(), "results": results}
    stage.write_json(Path(p.paths.reports) / "benchmark.json", record)
    stage.write_json(Path(p.paths.metrics) / "benchmark.json", headline.benchmark(results, p.headline.formats))
    write_plots(pd.DataFrame(rows), Path(p.paths.plots), Path(p.paths.reports) / "evaluate.json")


def write_plots(table, plots: Path, evaluate_record: Path) -> None:
    """Throughput per runtime, batch size (and device where several), and accuracy against batch-1 latency."""
    import pandas as pd

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
    accuracy = (stage.read_json(evaluate_record, {}) or {}).get("formats", {})
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


if __name__ == "__main__":
    stage.run(main)
