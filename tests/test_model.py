"""The Xception family: the standard size is Keras's Xception, scaled sizes keep its graph, params guard the weights."""

import keras
import pytest

from flowerpipe.model import xception
from flowerpipe.params import ParamsError, load


def signature(model) -> list[tuple]:
    """Each layer's kind, output shape and weight shapes, in order."""
    return [(type(layer).__name__, tuple(layer.output.shape), [tuple(w.shape) for w in layer.weights])
            for layer in model.layers]


def test_the_scaled_builder_at_standard_size_is_kerass_xception():
    """Same layers, shapes and weights, in the same order: the scaled variants are Xception's graph, narrower."""
    ref = keras.applications.Xception(include_top=False, weights=None, pooling="avg", input_shape=(71, 71, 3))
    ours = xception.scaled(71, 1.0, 8)
    assert ours.count_params() == ref.count_params() == 20_861_480
    assert signature(ours) == signature(ref)


def test_width_and_depth_scale_channels_and_middle_flow():
    small = xception.scaled(71, 0.125, 1)
    assert small.output.shape[-1] == 256 and small.count_params() < 200_000
    assert [xception.channels(n, 0.125) for n in (32, 64, 728, 2048)] == [8, 8, 88, 256]
    assert sum(1 for layer in small.layers if layer.name.endswith("_add")) == 3 + 1 + 1  # entry, middle, exit
    assert xception.build(71, 1.0, 8).name == "xception"  # the standard size comes from keras.applications


@pytest.mark.parametrize("model, message", [
    ({"width": 0.5}, "ImageNet weights exist only for the standard Xception"),
    ({"arch": "mobilenet_v2", "middle_blocks": 4, "weights": "none"}, "scale xception only"),
    ({"width": 0.0, "weights": "none"}, "model.width"),
])
def test_impossible_model_params_are_one_line(tmp_path, model, message):
    (tmp_path / "params.yaml").write_text(f"model: {model}\n")
    with pytest.raises(ParamsError, match=message):
        load(tmp_path / "params.yaml")
