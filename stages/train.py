"""train stage: fit the classifier on the TFRecords, logging every epoch with dvclive; save the .keras model."""

from flowerpipe.params import Params
from flowerpipe.pipeline import stage


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
