"""The run report: data, training, per-format accuracy, benchmark and environment, as Markdown, HTML and PNG plots."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from flowerpipe.formats.registry import ALL_NAMES
from flowerpipe.jsonio import read_json


def _plots(history: pd.DataFrame, bench: pd.DataFrame, acc_lat: pd.DataFrame, out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if len(history):
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        for col, a in (("accuracy", ax[0]), ("loss", ax[1])):
            a.plot(history.epoch, history[col], label=f"train {col}")
            if f"val_{col}" in history:
                a.plot(history.epoch, history[f"val_{col}"], label=f"val {col}")
            a.set_xlabel("epoch")
            a.legend()
        fig.tight_layout()
        fig.savefig(out / "training.png", dpi=90)
        plt.close(fig)
        made.append(("Training curves", "training.png"))
    ok = bench[bench.status == "ok"] if len(bench) else bench
    if len(ok):
        pivot = ok[ok.device == "cpu"].pivot_table(index="runtime", columns="batch_size", values="throughput_ips")
        ax = pivot.sort_values(pivot.columns[-1]).plot.barh(figsize=(8, 0.35 * len(pivot) + 1.5))
        ax.set_xlabel("images/s (CPU)")
        ax.figure.tight_layout()
        ax.figure.savefig(out / "throughput.png", dpi=90)
        plt.close(ax.figure)
        made.append(("Throughput by runtime and batch size", "throughput.png"))
    if len(acc_lat) and acc_lat.accuracy.notna().any():
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.scatter(acc_lat.latency_ms, acc_lat.accuracy)
        for r in acc_lat.itertuples():
            ax.annotate(r.format, (r.latency_ms, r.accuracy), fontsize=8)
        ax.set_xlabel("batch-1 latency (ms, CPU)")
        ax.set_ylabel("test accuracy")
        fig.tight_layout()
        fig.savefig(out / "accuracy_latency.png", dpi=90)
        plt.close(fig)
        made.append(("Accuracy against latency (up and left is better)", "accuracy_latency.png"))
    return made


def _pairs(record: dict) -> pd.DataFrame:
    """A one-row record as a two-column table (what, value), one line per field: readable at any width."""
    return pd.DataFrame({"what": list(record), "value": ["" if v is None else str(v) for v in record.values()]})


def build(records: Path, plots: Path, out: Path) -> Path:
    """Write out/report.md and out/report.html from the detail records and plot files of a run."""
    out.mkdir(parents=True, exist_ok=True)
    data = read_json(records / "data.json", {})
    train = read_json(records / "train.json", {})
    evaluate = read_json(records / "evaluate.json", {}).get("formats", {})
    bench = read_json(records / "benchmark.json", {})
    history = pd.DataFrame(train.pop("history", []))
    bench_df = pd.DataFrame([{"runtime": name, "device": device, "batch_size": int(b[1:]), **cell}
                             for name, devices in bench.get("results", {}).items()
                             for device, cells in devices.items() for b, cell in cells.items()])
    acc_lat = pd.read_csv(plots / "accuracy_latency.csv") if (plots / "accuracy_latency.csv").exists() \
        else pd.DataFrame()
    sections: list[tuple[str, str | pd.DataFrame]] = []
    sections.append(("Data", _pairs(data)))
    sections.append(("Training", _pairs(train)))
    order = {name: i for i, name in enumerate(ALL_NAMES)}
    evaluate = dict(sorted(evaluate.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    fmt = pd.DataFrame([{"format": k, **{c: v.get(c) for c in ("status", "accuracy", "macro_f1", "top1_agreement",
                                                              "max_prob_diff", "size_mb", "conversion_seconds")},
                         "note": v.get("reason", "")} for k, v in evaluate.items()])
    sections.append(("Every format on the test split (agreement is with the Keras model)", fmt))
    if len(bench_df):
        ok = bench_df[bench_df.status == "ok"]
        cols = ["runtime", "device", "batch_size", "latency_ms_median", "latency_ms_p99", "throughput_ips",
                "gflops", "fraction_of_peak", "peak_rss_mb"]
        sections.append(("Benchmark (timed cells)", ok[[c for c in cols if c in ok]]))
        skipped = bench_df[bench_df.status != "ok"].groupby(["runtime", "device"]).reason.first().reset_index()
        if len(skipped):
            sections.append(("Benchmark cells skipped here", skipped))
    serve = read_json(records / "serve.json", {})
    if serve:
        rows = [{"concurrency": k[1:], **v} for k, v in serve.get("load", {}).items()]
        sections.append((f"REST serving ({serve.get('format')}), answers checked against local inference",
                         pd.DataFrame(rows)))
    if bench:
        env = {**{k: v for k, v in bench.get("environment", {}).items() if k != "versions"},
               **bench.get("environment", {}).get("versions", {}),
               "matmul_peak_gflops": bench.get("matmul", {}).get("peak_gflops"),
               "model_gflop_per_image": bench.get("model_gflop_per_image"),
               "harness_overhead_ms": bench.get("overhead", {}).get("latency_ms_median")}
        sections.append(("Environment", _pairs(env)))
    figures = _plots(history, bench_df, acc_lat, out)
    md = ["# flowerpipe run report", ""]
    page = ["<html><head><meta charset='utf-8'><title>flowerpipe report</title><style>body{font-family:sans-serif;"
            "max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
            "padding:3px 6px}</style></head><body><h1>flowerpipe run report</h1>"]
    for title, body in sections:
        blank = body.astype(object).where(body.notna(), None)  # a skipped format's empty cells: blank, not nan
        md += [f"## {title}", "", blank.to_markdown(index=False, missingval="") if len(body) else "(not available)",
               ""]
        page += [f"<h2>{html.escape(title)}</h2>", body.to_html(index=False, na_rep="") if len(body) else
                 "<p>(not available)</p>"]
    for title, png in figures:
        md += [f"## {title}", "", f"![{title}]({png})", ""]
        page += [f"<h2>{html.escape(title)}</h2>", f"<img src='{png}' alt='{html.escape(title)}'>"]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text("\n".join(page + ["</body></html>"]))
    return out / "report.md"
