"""The headline metrics: the few numbers per stage that say whether an experiment is better (no strings).

Everything else a stage measures goes to its detail record under paths.reports, out of `dvc exp show`.
"""

from __future__ import annotations

from flowerpipe.formats.registry import REFERENCE


def evaluate(table: dict[str, dict], formats: list[str]) -> dict:
    """Test accuracy and macro F1 of the trained model; per headline format its accuracy delta and agreement."""
    ref = table.get(REFERENCE, {})
    if ref.get("status") != "ok":
        return {}
    out: dict = {"test_accuracy": ref["accuracy"], "test_macro_f1": ref["macro_f1"]}
    for name in formats:
        row = table.get(name, {})
        if row.get("status") == "ok":
            out[name] = {"acc_delta": round(row["accuracy"] - ref["accuracy"], 4), "agree": row["top1_agreement"]}
    return out


def benchmark(results: dict[str, dict], formats: list[str]) -> dict:
    """Per headline format: batch-1 latency (b1_ms) and best throughput (img_s, images/s) on its fastest device."""
    out: dict = {}
    for name in formats:
        best: dict | None = None
        for cells in results.get(name, {}).values():
            ok = {int(k[1:]): c for k, c in cells.items() if c.get("status") == "ok"}  # keys are "b<batch>"
            if not ok:
                continue
            row = {"b1_ms": round(ok[min(ok)]["latency_ms_median"], 2),
                   "img_s": round(max(c["throughput_ips"] for c in ok.values()), 1)}
            if best is None or row["b1_ms"] < best["b1_ms"]:
                best = row
        if best:
            out[name] = best
    return out


def serve(levels: dict[str, dict]) -> dict:
    """p99 latency (ms) and requests/s at the highest concurrency the load test ran."""
    if not levels:
        return {}
    top = levels[max(levels, key=lambda k: int(k[1:]))]  # keys are "c<concurrency>"
    return {"serve_p99_ms": round(top["latency_ms_p99"], 1), "serve_req_s": round(top["throughput_rps"], 1)}
