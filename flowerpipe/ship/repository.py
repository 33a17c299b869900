"""The shipped model repository, in Triton's layout, carrying the run's decision:

    <repository>/<name>/config.pbtxt      Triton's model configuration (ONNX and OpenVINO IR only)
    <repository>/<name>/labels.txt        class names, in output order (Triton's label_filename)
    <repository>/<name>/flowerpipe.json   the decision: which format and precision, why, what it was measured at
    <repository>/<name>/<version>/        the model files (model.onnx; model.xml + model.bin; model.tflite; or
                                          a SavedModel, TF Serving's layout)

`flowerpipe serve <repository>` serves it (new version folders are loaded as they appear), Triton serves it where
the format has a Triton backend, and KServe's storage initializer mounts it at /mnt/models. It is the thing a
user copies, uploads or promotes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flowerpipe.errors import FormatError
from flowerpipe.formats.base import Skipped
from flowerpipe.pipeline.outputs import atomic

MANIFEST = "flowerpipe.json"
LABELS = "labels.txt"
SCHEMA = 1


@dataclass(frozen=True)
class Shipped:
    """A model folder of a shipped repository, as its manifest describes it."""

    folder: Path  # <repository>/<name>
    name: str
    format: str  # the registry's variant name, e.g. onnx-int8
    family: str
    image_size: int
    classes: list[str]
    manifest: dict

    @property
    def repository(self) -> Path:
        """The repository root (what KServe mounts at /mnt/models)."""
        return self.folder.parent


def version_files(family: str, source: Path) -> dict[str, Path]:
    """Version-folder file name -> the built file it is copied from, as Triton's backends look for them."""
    source = Path(source)
    if family == "onnx":
        return {"model.onnx": source}
    if family == "openvino":
        return {"model.xml": source, "model.bin": source.with_suffix(".bin")}
    if family == "tflite":
        return {"model.tflite": source}
    if family == "savedmodel":  # the folder is the version folder (TF Serving's layout)
        return {f.relative_to(source).as_posix(): f for f in sorted(source.rglob("*")) if f.is_file()}
    raise Skipped(f"{family} models cannot be shipped as a model repository (Triton's and TF Serving's layouts take "
                  "onnx, openvino, tflite and savedmodel)")


OUTPUT = "probabilities"  # the output's name in the ONNX model, the SavedModel signature and flowerpipe's V2 API


def name_openvino_output(xml: Path) -> None:
    """Name a one-output IR's output `probabilities` (OpenVINO's converter leaves the SavedModel's `output_0`), so that
    Triton's openvino backend and flowerpipe serve answer with the same tensor name; weights are kept as they are."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    if len(model.outputs) != 1 or OUTPUT in model.outputs[0].get_names():
        return
    model.outputs[0].get_tensor().set_names({OUTPUT})
    tmp = xml.with_name(".renamed.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    tmp.replace(xml)
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))


def write_version(folder: Path, family: str, source: Path, version: int) -> Path:
    """Copy a built model into <folder>/<version>/ under the names Triton's backends expect (atomic: a temp name
    renamed, so a watching server never loads half a version)."""
    final = Path(folder) / str(version)
    with atomic(final) as tmp:  # a hidden name until whole: a watching server never loads half a version
        for name, src in version_files(family, source).items():
            if not src.is_file():
                raise FormatError(f"{src}: not built (run dvc repro)")
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / name)
        if family == "openvino":
            name_openvino_output(tmp / "model.xml")
    return final


def write(repository: Path, name: str, fmt: str, family: str, source: Path, version: int, classes: list[str],
          image_size: int, manifest: dict, config: Callable[[Path], str] | None) -> Shipped:
    """Write one model's folder of a repository (replacing what was there): version, labels, manifest, and
    config(the version's model file) as config.pbtxt."""
    folder = Path(repository) / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    written = write_version(folder, family, source, version)
    (folder / LABELS).write_text("\n".join(classes) + "\n")
    if config is not None:
        (folder / "config.pbtxt").write_text(config(written / next(iter(version_files(family, source)))))
    record = {"schema": SCHEMA, "name": name, "format": fmt, "family": family, "version": version,
              "image_size": image_size, "labels": LABELS, **manifest}
    (folder / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
    return read(folder)


def read(folder: Path) -> Shipped:
    """A shipped model folder's manifest and labels, or one FormatError line naming what is wrong."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: not a readable shipped-model manifest ({exc.__class__.__name__})") from None
    missing = [k for k in ("format", "family", "image_size") if k not in record]
    if missing:
        raise FormatError(f"{path}: no {', '.join(missing)} in the manifest")
    labels = folder / record.get("labels", LABELS)
    try:
        classes = [line.strip() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        raise FormatError(f"{folder}: no class names at {labels}") from None
    return Shipped(folder, record.get("name") or folder.name, record["format"], record["family"],
                   int(record["image_size"]), classes, record)


def find(path: Path, name: str | None = None) -> Shipped | None:
    """The shipped model at path: a model folder (holding flowerpipe.json) or a repository holding model folders
    (name picks one where there are several). None when path is neither."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / MANIFEST).is_file():
        return read(path)
    models = sorted(d for d in path.iterdir() if d.is_dir() and (d / MANIFEST).is_file())
    if not models:
        return None
    if name is not None:
        chosen = [d for d in models if d.name == name]
        if chosen:
            return read(chosen[0])
    if len(models) > 1:
        raise FormatError(f"{path}: {len(models)} models in this repository ({', '.join(d.name for d in models)}); "
                          "name one with --name")
    return read(models[0])
