"""Smoke run for a fresh install (`make smoke`): import every module, run download and tfrecords, predict once.

Runs with only the runtime lock installed (no pytest), on tiny generated photos in a temporary project.
Usage: python tests/smoke.py
"""

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def import_everything() -> int:
    """Import every module of flowerpipe/ and stages/ (the GPU-only ones import their packages lazily)."""
    names = [".".join(p.relative_to(ROOT).with_suffix("").parts) for folder in ("flowerpipe", "stages")
             for p in (ROOT / folder).rglob("*.py")]
    for name in names:
        importlib.import_module(name.removesuffix(".__init__"))
    return len(names)


def photos(root: Path, per_class: int = 6) -> Path:
    """Five class folders of small coloured JPEGs."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(["daisy", "dandelion", "roses", "sunflowers", "tulips"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            colour = np.array([50 * k % 256, 90 + 30 * k, 200 - 35 * k], np.float32)
            img = np.clip(colour + rng.normal(0, 20, (48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.jpg")
    return root


def main() -> None:
    """Everything, then one line of figures."""
    sys.path.insert(0, str(ROOT))
    count = import_everything()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        shutil.copy(ROOT / "dvc.yaml", project)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["data"]["url"] = str(photos(Path(tmp) / "photos"))
        params["split"].update(val=0.2, test=0.2)
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for stage in ("download", "tfrecords"):
            subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=project, env=env, check=True)
        from flowerpipe.formats.base import write_labels
        from flowerpipe.model.build import build_model
        from flowerpipe.params import Model

        model = project / "models" / "model.keras"
        model.parent.mkdir(parents=True)
        build_model(Model(image_size=71, weights="none", width=0.125, middle_blocks=1), 5).save(model)
        labels = ["alpha", "bravo", "charlie", "delta", "echo"]  # no name inside another: a row names one of them
        write_labels(model, labels)
        photo = next((Path(tmp) / "photos" / "roses").glob("*.jpg"))
        table = Path(tmp) / "predictions.csv"
        subprocess.run([sys.executable, "-m", "flowerpipe.cli", "predict", str(photo), "--model", str(model),
                        "--csv", str(table)], cwd=project, env=env, check=True, capture_output=True, text=True)
        import pandas as pd

        rows = pd.read_csv(table)
        assert len(rows) == 1 and Path(rows.path[0]) == photo, rows
        assert rows.prediction[0] in labels and 0.2 <= rows.probability[0] <= 1.0, rows  # 5 classes: top >= 1/5
    print(f"smoke passed on Python {sys.version.split()[0]}: {count} modules imported, download and tfrecords "
          f"stages ran, one prediction from a model folder")


if __name__ == "__main__":
    main()
