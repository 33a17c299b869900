"""features stage: the pretrained backbone's features of the train and val splits, for the frozen-backbone phase.

DVC keeps them: an experiment that changes only head params (train.learning_rate, train.epochs, model.dropout)
finds this stage unchanged and trains the head on these, without one pass over the images.
"""

from pathlib import Path

from flowerpipe import stage
from flowerpipe.params import Params


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    import shutil

    from flowerpipe.model import features_model, resolve_weights
    from flowerpipe.outputs import check_outputs
    from flowerpipe.quiet import quiet_tensorflow
    from flowerpipe.training import features

    out = Path(p.paths.features)
    check_outputs({"paths.features": out}, {"paths.tfrecords": p.paths.tfrecords})
    shutil.rmtree(out, ignore_errors=True)  # a stale split's files never outlive a new extraction
    if resolve_weights(p.model.weights) is None:
        features.skip(out, "model.weights is none: training from scratch has no frozen-backbone phase")
    elif not p.train.cache_features:
        features.skip(out, "train.cache_features is off: the head phase runs full forward passes")
    else:
        quiet_tensorflow()  # now that it is needed: imported with its start-up notices hidden
        feats, secs = features.extract_timed(features_model(p.model), Path(p.paths.tfrecords), p.model.image_size)
        features.save(out, feats, features.key(p.model, Path(p.paths.tfrecords)), secs)
        print(f"features of {', '.join(f'{len(y)} {s}' for s, (_, y) in feats.items())} images in {secs:.1f}s -> {out}")
        return
    print(f"features: skipped: {stage.read_json(out / features.RECORD)['reason']}")


if __name__ == "__main__":
    stage.run(main, tensorflow=False)  # TensorFlow is imported only when there are features to extract
