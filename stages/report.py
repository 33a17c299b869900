"""report stage: one Markdown + HTML summary of the run, with plots as PNG."""

from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage

STAGE = stage.Spec(
    order=110,
    deps=[stage.record("data"), stage.record("train"), stage.record("evaluate"), stage.record("benchmark"),
          stage.record("serve"), "${paths.plots}/accuracy_latency.csv"],
    params=["deploy", "serve.min_agreement"],
    outs=[{"${paths.reports}/summary": stage.NO_CACHE}, {stage.record("recommend"): stage.NO_CACHE},
          {"${paths.plots}/ship.csv": stage.NO_CACHE}],
    metrics=[{"${paths.metrics}/deploy.json": stage.NO_CACHE}],
    plots=[{"Test accuracy against batch-1 latency (ms): the Pareto front above the floors, the recommended format "
            "ringed": {
                "template": "labeled_scatter", "x": "latency_ms", "x_label": "batch-1 latency (ms, fastest device)",
                "y_label": "test accuracy", "y": {"${paths.plots}/ship.csv": "accuracy"}}}])


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.decide.recommend import decide_for, headline, render
    from flowerpipe.decide.report import build

    try:
        decision = decide_for(p)
    except FileNotFoundError as exc:
        decision = None
        print(f"no recommendation: {exc}")
    stage.write_json(Path(p.paths.reports) / "recommend.json", decision or {})
    stage.write_json(Path(p.paths.metrics) / "deploy.json", headline(decision) if decision else {})
    out = build(Path(p.paths.reports), Path(p.paths.plots), Path(p.paths.reports) / "summary", decision)
    if decision:
        print(render(decision))
    print(f"report -> {out}")


if __name__ == "__main__":
    stage.run(main, tensorflow=False)
