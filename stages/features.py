"""features stage: the pretrained backbone's features of the train and val splits, for the frozen-backbone phase.

DVC keeps them: an experiment that changes only head params (train.learning_rate, train.epochs, model.dropout)
finds this stage unchanged and trains the head on these, without one pass over the images.
"""

from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage

STAGE = stage.Spec(
    order=30,
    deps=["${paths.tfrecords}"],
    params=[*stage.MODEL_PARAMS, "train.cache_features"],
    outs=["${paths.features}"])


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.model.build import features_model, resolve_weights
    from flowerpipe.pipeline.outputs import atomic, check_outputs
    from flowerpipe.quiet import quiet_tensorflow
    from flowerpipe.training import features

    out = Path(p.paths.features)
    check_outputs({"paths.features": out}, {"paths.tfrecords": p.paths.tfrecords})
    with atomic(out) as tmp:  # the previous features stay until the new ones are complete
        tmp.mkdir()
        if resolve_weights(p.model.weights) is None:
            features.skip(tmp, "model.weights is none: training from scratch has no frozen-backbone phase")
        elif not p.train.cache_features:
            features.skip(tmp, "train.cache_features is off: the head phase runs full forward passes")
        else:
            quiet_tensorflow()  # now that it is needed: imported with its start-up notices hidden
            feats, secs = features.extract(features_model(p.model), Path(p.paths.tfrecords), p.model.image_size)
            features.save(tmp, feats, features.key(p.model, Path(p.paths.tfrecords)), secs)
    record = stage.read_json(out / features.RECORD)
    if record["status"] == "ok":
        print(f"features of {record['train']['images']} train images in {record['seconds']}s -> {out}")
    else:
        print(f"features: skipped: {record['reason']}")


if __name__ == "__main__":
    stage.run(main, tensorflow=False)  # TensorFlow is imported only when there are features to extract
