"""The run report: data, training, per-format accuracy, benchmark and environment, as Markdown, HTML and PNG plots."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from flowerpipe.decide.pareto import pareto
from flowerpipe.formats.registry import ALL_NAMES
from flowerpipe.jsonio import read_json

SHIP_COLUMNS = ["format", "latency_ms", "accuracy", "floor", "pareto", "recommended"]


def ship_points(acc_lat: pd.DataFrame, decision: dict | None) -> pd.DataFrame:
    """Each format's (latency_ms, accuracy) with floor ('below' or ''), pareto ('front' among those above the floors,
    or '') and recommended ('yes' for the lowest-latency choice): the picture's data, for the report and dvc plots."""
    pts = acc_lat.dropna(subset=["accuracy"])[["format", "latency_ms", "accuracy"]].copy()
    formats = (decision or {}).get("formats", {})
    below = pts.format.map(lambda n: formats.get(n, {}).get("status") == "below_floor").astype(bool)
    front = pd.Series(False, index=pts.index)
    if (~below).any():
        front[~below] = pareto(pts[~below])
    devices = (decision or {}).get("devices", {})
    shipped = (devices.get("cpu") or devices.get("gpu") or {}).get("latency", {}).get("format")
    return pts.assign(floor=["below" if b else "" for b in below], pareto=["front" if f else "" for f in front],
                      recommended=["yes" if n == shipped else "" for n in pts.format])


def _pareto_plot(plt, pts: pd.DataFrame, out: Path) -> str:
    """Accuracy against latency, the front over the formats above the floors; labels in a column at the right."""
    import numpy as np

    pts = pts.assign(below=pts.floor == "below", front=pts.pareto == "front")
    shipped = next(iter(pts.format[pts.recommended == "yes"]), None)
    fig, ax = plt.subplots(figsize=(10, max(4.5, 0.22 * len(pts) + 1.5)))
    rest = pts[~pts.front & ~pts.below]
    ax.scatter(rest.latency_ms, rest.accuracy, color="0.6", label="dominated")
    if pts.below.any():
        ax.scatter(pts.latency_ms[pts.below], pts.accuracy[pts.below], marker="x", color="0.4",
                   label="below an accuracy floor")
    front = pts[pts.front].sort_values("latency_ms")
    ax.plot(front.latency_ms, front.accuracy, "o-", color="tab:blue", drawstyle="steps-post", label="Pareto front")
    if shipped in set(pts.format):
        star = pts[pts.format == shipped].iloc[0]
        ax.scatter([star.latency_ms], [star.accuracy], marker="*", s=300, color="tab:red", zorder=3,
                   label=f"recommended: {shipped}")
    # One label per format in a column right of the axes, in the order of their points' height: never on top of
    # each other, however close the points are
    ys = np.linspace(0.02, 0.98, len(pts)) if len(pts) > 1 else np.array([0.5])
    # (at one height, the faster point takes the higher label: their lines do not cross)
    for r, y in zip(pts.sort_values(["accuracy", "latency_ms"], ascending=[True, False]).itertuples(), ys,
                    strict=True):
        ax.annotate(r.format, xy=(r.latency_ms, r.accuracy), xytext=(1.03, y), textcoords="axes fraction",
                    fontsize=8, va="center", annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.6", "shrinkA": 0, "shrinkB": 3})
    ax.margins(x=0.08, y=0.15)
    ax.set_xlabel("batch-1 latency (ms, fastest device; lower is better)")
    ax.set_ylabel("test accuracy (higher is better)")
    ax.legend(loc="best", fontsize=8)
    fig.subplots_adjust(left=0.09, right=0.74, bottom=0.11, top=0.97)
    fig.savefig(out / "accuracy_latency.png", dpi=90)
    plt.close(fig)
    return "accuracy_latency.png"


def _plots(history: pd.DataFrame, bench: pd.DataFrame, points: pd.DataFrame, out: Path) -> list[tuple[str, str]]:
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
    if len(points):
        made.append(("Test accuracy against batch-1 latency: the Pareto front of the formats above the floors (none "
                     "both faster and more accurate), the recommended one starred",
                     _pareto_plot(plt, points, out)))
    return made


def _pairs(record: dict) -> pd.DataFrame:
    """A one-row record as a two-column table (what, value), one line per field: readable at any width."""
    return pd.DataFrame({"what": list(record), "value": ["" if v is None else str(v) for v in record.values()]})


def _bench_frame(bench: dict) -> pd.DataFrame:
    """The benchmark record's cells, one row per (runtime, device, batch size)."""
    return pd.DataFrame([{"runtime": name, "device": device, "batch_size": int(b[1:]), **cell}
                         for name, devices in bench.get("results", {}).items()
                         for device, cells in devices.items() for b, cell in cells.items()])


def _formats_table(evaluate: dict) -> pd.DataFrame:
    """Every format's scores on the test split, in the registry's order (unknown names last, by name)."""
    order = {name: i for i, name in enumerate(ALL_NAMES)}
    evaluate = dict(sorted(evaluate.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    return pd.DataFrame([{"format": k, **{c: v.get(c) for c in ("status", "accuracy", "macro_f1", "top1_agreement",
                                                               "max_prob_diff", "size_mb", "conversion_seconds")},
                          "note": v.get("reason", "")} for k, v in evaluate.items()])


def _benchmark_sections(bench_df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The timed cells in the registry's order and numeric batch order; the skipped (runtime, device) pairs apart."""
    if not len(bench_df):
        return []
    ok = bench_df[bench_df.status == "ok"]
    cols = ["runtime", "device", "batch_size", "latency_ms_median", "latency_ms_p99", "throughput_ips",
            "gflops", "fraction_of_peak", "peak_rss_mb"]
    rank = {name: i for i, name in enumerate(ALL_NAMES)}
    ok = ok.assign(_rank=ok.runtime.map(lambda n: rank.get(n, len(rank)))).sort_values(
        ["_rank", "runtime", "device", "batch_size"])  # batch sizes in numeric order
    sections = [("Benchmark (timed cells)", ok[[c for c in cols if c in ok]])]
    skipped = bench_df[bench_df.status != "ok"].groupby(["runtime", "device"]).reason.first().reset_index()
    if len(skipped):
        sections.append(("Benchmark cells skipped here", skipped))
    return sections


def _serve_sections(serve: dict) -> list[tuple[str, pd.DataFrame]]:
    """The REST load test per concurrency, when the serve check ran."""
    if not serve:
        return []
    rows = [{"concurrency": k[1:], **v} for k, v in serve.get("load", {}).items()]
    return [(f"REST serving ({serve.get('format')}), answers checked against local inference", pd.DataFrame(rows))]


def _environment(bench: dict) -> dict:
    """Where the benchmark ran: the machine, library versions, measured matmul peaks, model cost, harness overhead."""
    env = bench.get("environment", {})
    return {**{k: v for k, v in env.items() if k != "versions"},
            **env.get("versions", {}),
            **{f"matmul_peak_{device}_{x}": peak["gflops"] for device, by in bench.get("peaks", {}).items()
               for x, peak in by.items() if peak.get("status") == "ok"},
            "model_gflop_per_image": bench.get("model_gflop_per_image"),
            "harness_overhead_ms": bench.get("overhead", {}).get("latency_ms_median")}


def _sections(records: Path, decision: dict | None) -> tuple[list[tuple[str, str | pd.DataFrame]], pd.DataFrame,
                                                             pd.DataFrame]:
    """The report's sections in order, what to ship first; with the training history and benchmark cells to plot."""
    train = read_json(records / "train.json", {})
    bench = read_json(records / "benchmark.json", {})
    history = pd.DataFrame(train.pop("history", []))
    bench_df = _bench_frame(bench)
    sections: list[tuple[str, str | pd.DataFrame]] = []
    if decision:
        from flowerpipe.decide.recommend import render

        sections.append(("What to ship (flowerpipe recommend)", render(decision)))
    sections.append(("Data", _pairs(read_json(records / "data.json", {}))))
    sections.append(("Training", _pairs(train)))
    sections.append(("Every format on the test split (agreement is with the Keras model)",
                     _formats_table(read_json(records / "evaluate.json", {}).get("formats", {}))))
    sections += _benchmark_sections(bench_df)
    sections += _serve_sections(read_json(records / "serve.json", {}))
    if bench:
        sections.append(("Environment", _pairs(_environment(bench))))
    return sections, history, bench_df


def _write_pages(sections: list[tuple[str, str | pd.DataFrame]], figures: list[tuple[str, str]], out: Path) -> None:
    """Write out/report.md and out/report.html: each section (text preformatted, tables blank where missing), then the
    figures."""
    md = ["# flowerpipe run report", ""]
    page = ["<html><head><meta charset='utf-8'><title>flowerpipe report</title><style>body{font-family:sans-serif;"
            "max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
            "padding:3px 6px}</style></head><body><h1>flowerpipe run report</h1>"]
    for title, body in sections:
        if isinstance(body, str):  # preformatted text
            md += [f"## {title}", "", "```", body, "```", ""]
            page += [f"<h2>{html.escape(title)}</h2>", f"<pre>{html.escape(body)}</pre>"]
            continue
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


def build(records: Path, plots: Path, out: Path, decision: dict | None = None) -> Path:
    """Write out/report.md and out/report.html from the detail records and plot files of a run; what to ship first."""
    out.mkdir(parents=True, exist_ok=True)
    acc_lat = pd.read_csv(plots / "accuracy_latency.csv") if (plots / "accuracy_latency.csv").exists() \
        else pd.DataFrame()
    sections, history, bench_df = _sections(records, decision)
    points = ship_points(acc_lat, decision) if len(acc_lat) else pd.DataFrame(columns=SHIP_COLUMNS)
    plots.mkdir(parents=True, exist_ok=True)
    points.to_csv(plots / "ship.csv", index=False)  # what `dvc plots` draws, the same points as the picture
    _write_pages(sections, _plots(history, bench_df, points, out), out)
    return out / "report.md"
