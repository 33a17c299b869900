"""train stage: fit the classifier on the TFRecords, logging every epoch with dvclive; save the .keras model."""

from pathlib import Path

from flowerpipe import stage
from flowerpipe.params import Params

COMPUTE_DTYPES = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from dvclive import Live

    from flowerpipe.outputs import check_outputs
    from flowerpipe.train import fit
    from flowerpipe.training.saving import accuracy_on, inference_copy
    from flowerpipe.training.throughput import matmul_peak_gflops

    check_outputs({"paths.model": p.paths.model, "paths.train_dir": p.paths.train_dir, "paths.live": p.paths.live},
                  {"paths.tfrecords": p.paths.tfrecords, "paths.features": p.paths.features})
    # Multi-worker: every worker runs this stage in its own checkout (`dvc repro` on each host) and writes
    # the same declared outputs there; the replicas hold identical weights, so every copy is the model.
    with Live(p.paths.live, dvcyaml=None, save_dvc_exp=False, report=None) as live:
        model, result, ckpt = fit(Path(p.paths.tfrecords), p.model, p.train, Path(p.paths.train_dir) / "checkpoints",
                                  live, Path(p.paths.features))
        out = Path(p.paths.model)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp.keras")
        saved = inference_copy(model)
        saved.save(tmp)  # weights only: no optimizer state (a third of the size)
        val_accuracy = accuracy_on(saved, Path(p.paths.tfrecords), "val", p.model.image_size, p.train.batch_size)
        live.log_metric("model_val_accuracy", round(val_accuracy, 4), plot=False)
        live.log_metric("train_seconds", round(result.train_seconds, 1), plot=False)
        secs = result.train_seconds or float("inf")
        rate, gflops = result.images_seen / secs, result.flops / secs / 1e9
        # The share of what this device's matmuls reach in the precision training computed in.
        peak = matmul_peak_gflops(COMPUTE_DTYPES.get(result.precision, "float32"))
        live.log_metric("train_img_s", round(rate, 2), plot=False)
        live.log_metric("train_peak_frac", round(gflops / peak, 3), plot=False)
        tmp.replace(out)
    stage.write_json(Path(p.paths.reports) / "train.json", {
        "saved_model_val_accuracy": round(val_accuracy, 4),
        "best_epoch_val_accuracy": round(result.best_val_accuracy, 4),
        "epochs_run": result.epochs_run, "train_seconds": round(result.train_seconds, 1),
        "scratch_minutes": p.train.scratch_minutes, "budget_epochs": result.budget_epochs,
        "images_per_second": round(rate, 2), "gflops_per_second": round(gflops, 3),
        "matmul_peak_gflops": round(peak, 1), "fraction_of_peak": round(gflops / peak, 4),
        "replicas": result.replicas, "strategy": result.strategy, "precision": result.precision,
        "head_features": result.features, "resumed_from": result.resumed_from, "history": result.history,
    })
    ckpt.clear()
    print(f"val accuracy of the saved model {val_accuracy:.4f} after {result.epochs_run} epochs -> {out}")


if __name__ == "__main__":
    stage.run(main)
