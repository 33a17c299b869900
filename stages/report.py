"""report stage: one Markdown + HTML summary of the run, with plots as PNG."""

from pathlib import Path

from flowerpipe import stage
from flowerpipe.params import Params


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.report import build

    out = build(Path(p.paths.reports), Path(p.paths.plots), Path(p.paths.reports) / "summary")
    print(f"report -> {out}")


if __name__ == "__main__":
    stage.run(main, tensorflow=False)
