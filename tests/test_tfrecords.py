import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, call_stage, make_photos, write_params
from PIL import Image

from flowerpipe.data.build import build
from flowerpipe.data.images import check_image
from flowerpipe.data.split import stratified_split
from flowerpipe.data.tfrecord import Manifest, arrays, dataset
from flowerpipe.params import Split


def add_bad_files(raw: Path) -> None:
    """A corrupt JPEG, a zero-byte file, grayscale, CMYK, PNG named .jpg, a non-image, into the class folders."""
    good = (raw / "daisy" / "daisy_000.jpg").read_bytes()
    (raw / "daisy" / "corrupt.jpg").write_bytes(good[: len(good) // 3])
    (raw / "daisy" / "empty.jpg").write_bytes(b"")
    (raw / "roses" / "notes.txt").write_text("not a photo")
    Image.new("L", (40, 30), 128).save(raw / "tulips" / "gray.jpg")
    Image.new("CMYK", (40, 30), (0, 200, 200, 0)).save(raw / "tulips" / "cmyk.jpg")
    Image.new("RGB", (40, 30), (10, 200, 10)).save(raw / "sunflowers" / "png_named.jpg", format="PNG")
    Image.new("RGB", (40, 30), (10, 20, 200)).save(raw / "sunflowers" / "tiff.tif")


@pytest.fixture
def raw(tmp_path):
    r = make_photos(tmp_path / "raw", per_class=10)
    add_bad_files(r)
    return r


def test_bad_files_are_skipped_listed_and_counted(raw, tmp_path):
    m = build(raw, tmp_path / "tfr", Split(val=0.2, test=0.2, seed=1), 64)
    reasons = {s["path"]: s["reason"] for s in m.skipped}
    assert set(reasons) == {"daisy/corrupt.jpg", "daisy/empty.jpg", "roses/notes.txt"}
    assert reasons["daisy/empty.jpg"] == "empty file" and reasons["roses/notes.txt"] == "not an image"
    assert "corrupt" in reasons["daisy/corrupt.jpg"] or "truncated" in reasons["daisy/corrupt.jpg"]
    assert m.reencoded == ["sunflowers/tiff.tif"]
    assert m.classes == CLASSES
    assert sum(m.count(s) for s in ("train", "val", "test")) == 50 + 4
    x, y = arrays(tmp_path / "tfr", "train", 32)
    assert x.shape[1:] == (32, 32, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255


def test_grayscale_cmyk_and_png_decode_as_rgb(raw):
    """Stored as they are, and the training decoder makes them the RGB colours a viewer shows."""
    from flowerpipe.data.images import decode_resize

    expected = {"tulips/gray.jpg": (128, 128, 128), "tulips/cmyk.jpg": (255, 55, 55),
                "sunflowers/png_named.jpg": (10, 200, 10)}
    for rel, rgb in expected.items():
        c = check_image(raw / rel, rel)
        assert c.ok and not c.reencoded and c.data == (raw / rel).read_bytes()
        pixels = decode_resize(c.data, 16).numpy()
        assert pixels.shape == (16, 16, 3), rel
        assert np.abs(pixels.reshape(-1, 3).mean(0) - rgb).max() < 8, (rel, pixels.reshape(-1, 3).mean(0))


def test_stratified_and_reproducible(tmp_path):
    items = [[f"{c}/{i}" for i in range(20)] for c in range(5)]
    a = stratified_split(items, 0.1, 0.2, seed=3)
    assert a == stratified_split(items, 0.1, 0.2, seed=3)
    assert a != stratified_split(items, 0.1, 0.2, seed=4)
    for label in range(5):
        assert sum(1 for _, lab in a["test"] if lab == label) == 4
        assert sum(1 for _, lab in a["val"] if lab == label) == 2
    every = [x for s in a.values() for x, _ in s]
    assert len(every) == len(set(every)) == 100


def test_byte_identical_rebuild_and_seed_changes_split(tmp_path):
    photos = make_photos(tmp_path / "photos", per_class=10)
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        write_params(tmp_path / run, {"data": {"url": str(photos)}, "split": {"val": 0.2, "test": 0.2}})
        call_stage("download", tmp_path / run)
        call_stage("tfrecords", tmp_path / run)
    a, b = tmp_path / "a" / "data" / "tfrecords", tmp_path / "b" / "data" / "tfrecords"
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
    data = json.loads((tmp_path / "a" / "reports" / "data.json").read_text())
    assert data["images"] == 50 and data["skipped"] == 0
    write_params(tmp_path / "b", {"data": {"url": str(photos)}, "split": {"val": 0.2, "test": 0.2, "seed": 7}})
    call_stage("tfrecords", tmp_path / "b")
    ma, mb = Manifest.read(a), Manifest.read(b)
    assert ma.splits["test"]["per_class"] == mb.splits["test"]["per_class"]
    assert (a / "test-00000-of-00001.tfrecord").read_bytes() != (b / "test-00000-of-00001.tfrecord").read_bytes()


def test_reader_batches_and_labels(raw, tmp_path):
    build(raw, tmp_path / "tfr", Split(val=0.2, test=0.2, seed=1), 64)
    batches = list(dataset(tmp_path / "tfr", "val", 48, batch_size=4))
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert batches[0][0].shape == (4, 48, 48, 3)
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3, 4]


def test_missing_manifest_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        Manifest.read(tmp_path)
