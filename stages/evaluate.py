"""evaluate stage: score every available model format on the held-out test split, against the Keras model."""

import time
from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage

STAGE = stage.Spec(
    order=70,
    deps=["${paths.tfrecords}", stage.MODELS, stage.RECORDS],
    params=[*stage.SERVED_PARAMS, stage.WANTED, "evaluate", "benchmark.devices", "headline.formats"],
    outs=[{"${paths.plots}/confusion.csv": stage.NO_CACHE}, {stage.record("evaluate"): stage.NO_CACHE},
          {stage.record("per_class"): stage.NO_CACHE}],
    metrics=[{"${paths.metrics}/evaluate.json": stage.NO_CACHE}],
    plots=[{"Confusion matrix (test split, Keras model)": {
        "template": "confusion", "x": "actual", "y": {"${paths.plots}/confusion.csv": "predicted"}}}])


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    import pandas as pd

    from flowerpipe.data.tfrecord import Manifest, arrays
    from flowerpipe.decide import headline
    from flowerpipe.formats.base import Skipped, size_mb
    from flowerpipe.formats.registry import check, conversion_status, load, variants
    from flowerpipe.measure.scores import agreement, predict_batches, score

    check(p)
    classes = Manifest.read(p.paths.tfrecords).classes
    Path(p.paths.plots).mkdir(parents=True, exist_ok=True)
    images, labels = arrays(p.paths.tfrecords, "test", p.model.image_size)
    converted = conversion_status(p)
    table: dict[str, dict] = {}
    reference = None
    per_class: dict[str, dict] = {}
    for v in variants(p):
        rec = converted.get(v.name, {})
        if rec.get("status") == "skipped":
            table[v.name] = {"status": "skipped", "reason": rec.get("reason", "")}
            continue
        if not v.path.exists() and not rec:
            table[v.name] = {"status": "not_built", "reason": f"{v.path} not found: its conversion stage has not run"}
            continue
        # Scored on every device it is benchmarked on: a GPU engine is checked, not only timed.
        rows: dict[str, dict] = {}
        for device in p.benchmark.devices:
            try:
                runner = load(v, device)
            except Skipped as exc:
                rows[device] = {"status": "skipped", "reason": str(exc)}
                continue
            t = time.perf_counter()
            probs = predict_batches(runner, images, p.evaluate.batch_size)
            secs = time.perf_counter() - t
            runner.close()
            if reference is None:
                reference = probs  # the first variant on its first device: the Keras model itself
                pd.DataFrame({"actual": [classes[i] for i in labels],
                              "predicted": [classes[i] for i in probs.argmax(1)]}).to_csv(
                    Path(p.paths.plots) / "confusion.csv", index=False)
            s = score(probs, labels, classes)
            rows[device] = {"status": "ok", **{k: s[k] for k in ("accuracy", "macro_f1")},
                            **agreement(probs, reference), "eval_seconds": round(secs, 2)}
            per_class.setdefault(v.name, s["per_class"])
            print(f"{v.name:20s} {device} accuracy {s['accuracy']:.4f}  agreement "
                  f"{rows[device]['top1_agreement']:.4f}  max|dp| {rows[device]['max_prob_diff']:.2e}")
        # The variant's own row is its first device where it ran (the CPU for all but TensorRT).
        device = next((d for d, r in rows.items() if r["status"] == "ok"), next(iter(rows), ""))
        table[v.name] = {**rows.get(device, {"status": "skipped", "reason": "no device to run on"}), "device": device,
                         "size_mb": size_mb(v.path), "conversion_seconds": rec.get("seconds", 0.0), "devices": rows}
    reports = Path(p.paths.reports)
    stage.write_json(reports / "evaluate.json", {"test_images": int(len(labels)), "formats": table})
    stage.write_json(reports / "per_class.json", per_class)
    stage.write_json(Path(p.paths.metrics) / "evaluate.json", headline.evaluate(table, p.headline.formats))


if __name__ == "__main__":
    stage.run(main)
