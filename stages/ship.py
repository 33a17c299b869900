"""ship stage: the served format as a versioned model repository (Triton's layout) with the decision, its Triton
config and its KServe manifests."""

from flowerpipe.params import Params
from flowerpipe.pipeline import stage

STAGE = stage.Spec(
    order=120,
    deps=[stage.CPU_MODELS, stage.CPU_RECORDS, stage.record("serve"), stage.record("recommend"),
          stage.record("benchmark")],
    params=[*stage.SERVED_PARAMS, "serve.max_batch", "serve.batch_window_ms", "ship"],
    outs=["${paths.ship}"])


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.formats.base import Skipped
    from flowerpipe.ship.make import ship, skip

    try:
        shipped = ship(p)
    except Skipped as exc:  # the served format has no model-repository layout: recorded, and dvc repro goes on
        skip(p, str(exc))
        print(f"ship: skipped: {exc}")
        return
    config = shipped.folder / "config.pbtxt"
    print(f"shipped {shipped.format} as {shipped.folder}/{p.export.version}/ "
          f"({'Triton config ' + str(config) if config.exists() else shipped.manifest['triton']['reason']}); "
          f"KServe manifests in {shipped.repository.parent / 'kserve'}")
    print(f"serve it: flowerpipe serve {shipped.repository}")


if __name__ == "__main__":
    stage.run(main, tensorflow=False)
