"""train stage: fit the classifier on the TFRecords, logging every epoch with dvclive; save the .keras model."""

from flowerpipe.params import Params
from flowerpipe.pipeline import stage

STAGE = stage.Spec(
    order=40,
    deps=["${paths.tfrecords}", "${paths.features}"],
    params=[*stage.MODEL_PARAMS, "model.dropout", "train"],
    outs=["${paths.model}", {"${paths.live}/plots": stage.NO_CACHE}, {stage.record("train"): stage.NO_CACHE}],
    metrics=[{"${paths.live}/metrics.json": stage.NO_CACHE}],
    plots=[
        {"Accuracy by epoch (train solid, val dashed)": {
            "template": "linear", "x": "step", "x_label": "epoch (0 = first)", "y_label": "accuracy",
            "y": {"${paths.live}/plots/metrics/accuracy.tsv": "accuracy",
                  "${paths.live}/plots/metrics/val_accuracy.tsv": "val_accuracy"}}},
        {"Loss by epoch (train solid, val dashed)": {
            "template": "linear", "x": "step", "x_label": "epoch (0 = first)", "y_label": "loss",
            "y": {"${paths.live}/plots/metrics/loss.tsv": "loss",
                  "${paths.live}/plots/metrics/val_loss.tsv": "val_loss"}}}])


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.pipeline.outputs import check_outputs

    check_outputs({"paths.model": p.paths.model, "paths.train_dir": p.paths.train_dir, "paths.live": p.paths.live},
                  {"paths.tfrecords": p.paths.tfrecords, "paths.features": p.paths.features})
    if p.train.strategy == "ray":
        # Ray Train starts train.ray_workers workers (a local Ray, or the cluster at RAY_ADDRESS) and writes each
        # one's TF_CONFIG; worker 0 writes the outputs below, the others theirs under paths.train_dir/workers/.
        from flowerpipe.scale.ray_train import train_on_ray

        train_on_ray(p)
        return
    # Multi-worker: every worker runs this stage in its own checkout (`dvc repro` on each host) and writes
    # the same declared outputs there; the replicas hold identical weights, so every copy is the model.
    from flowerpipe.training.run import train_and_save

    train_and_save(p)


if __name__ == "__main__":
    stage.run(main)
