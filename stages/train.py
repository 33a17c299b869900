"""train stage: fit the classifier on the TFRecords; save .keras, per-epoch history and metrics/train.json."""

import tempfile
from pathlib import Path

from flowerpipe import stage
from flowerpipe.params import Params


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    import pandas as pd

    from flowerpipe.train import fit, inference_copy, is_chief

    model, result, ckpt = fit(Path(p.paths.tfrecords), p.model, p.train, Path(p.paths.train_dir) / "checkpoints")
    if not is_chief():  # multi-worker: every worker must save, only the chief's copy is kept
        model.save(Path(tempfile.mkdtemp()) / "model.keras")
        return
    out = Path(p.paths.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.keras")
    inference_copy(model).save(tmp)  # weights only: no optimizer state (a third of the size)
    tmp.replace(out)
    plots = Path(p.paths.plots)
    plots.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(result.history).to_csv(plots / "train_history.csv", index=False)
    stage.write_json(Path(p.paths.metrics) / "train.json", {
        "best_val_accuracy": round(result.best_val_accuracy, 4),
        "final_train_accuracy": round(result.history[-1].get("accuracy", 0.0), 4) if result.history else 0.0,
        "epochs_run": result.epochs_run,
        "wall_seconds": round(result.train_seconds, 1),
        "train_images_per_second": round(result.images_seen / result.train_seconds, 2) if result.train_seconds else 0,
        "replicas": result.replicas, "strategy": result.strategy, "mixed_precision": result.mixed_precision,
        "resumed_from": result.resumed_from,
    })
    ckpt.clear()
    print(f"best val accuracy {result.best_val_accuracy:.4f} after {result.epochs_run} epochs -> {out}")


if __name__ == "__main__":
    stage.run(main)
