"""Tell from-scratch recipe choices apart on a small dataset: repeated stratified splits, mean and spread.

Every config trains on each split (split seeds 1000, 1001, ...; 80/10/10 per class) with weights none and a
time budget of --minutes, and is scored on the split's held-out val + test photos together (the recipe has
no early stopping, so validation picks nothing). The runs go split by split, the configs in turn, so a machine
that drifts moves every config alike; each run is a fresh process and one line of --out, and a run already
there is not repeated (stop and start again at will). The table: per config the mean and standard deviation
over the splits, and the paired difference on the same splits from the config it adds one choice to
(NAME+X adds X to NAME; any other config is compared with the first).

A config is NAME or NAME:key=value,key=value over params.yaml's defaults (as `dvc exp run -S` takes them).
Usage: python benchmarks/scratch_recipe.py DATA_FOLDER --config base: --config crop:train.scratch_crop_area=0.25
                                          [--splits 3] [--minutes 6] [--out runs.jsonl] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from flowerpipe.errors import UserError, run_script

ROOT = Path(__file__).resolve().parents[1]


def overrides(config: str) -> tuple[str, dict[str, object]]:
    """NAME:key=value,... as a name and the dotted keys' YAML values."""
    name, _, rest = config.partition(":")
    pairs = [kv for kv in rest.split(",") if kv.strip()]
    if any("=" not in kv for kv in pairs):
        raise UserError(f"--config {config}: expected NAME:key=value,key=value")
    return name, {k.strip(): yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in pairs)}


def params_for(minutes: float, sets: dict[str, object]):
    """params.yaml's defaults, from scratch with a budget of `minutes`, then the config's keys."""
    from flowerpipe.params import parse

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["weights"] = "none"
    raw["train"]["scratch_minutes"] = minutes
    for key, value in sets.items():
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    return parse(raw, "--config")


def records(data: Path, work: Path, seed: int) -> Path:
    """The split's TFRecords (built once per seed)."""
    from flowerpipe.data.build import build
    from flowerpipe.params import Split

    out = work / f"split-{seed}"
    if not (out / "manifest.json").exists():
        build(data, out, Split(val=0.1, test=0.1, seed=seed), shard_mb=64)
    return out


def one_run(data_dir: Path, minutes: float, sets: dict[str, object], work: Path) -> dict:
    """Train one config on one split's records; its held-out accuracy and how the run went."""
    from dvclive import Live

    from flowerpipe.quiet import quiet_tensorflow
    from flowerpipe.training.run import fit
    from flowerpipe.training.saving import accuracy_on

    quiet_tensorflow()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p = params_for(minutes, sets)
    t = time.perf_counter()
    with Live(str(work / "live"), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        model, result, ckpt = fit(data_dir, p.model, p.train, work / "ckpt", live)
    seconds = time.perf_counter() - t
    ckpt.clear()
    size, batch = p.model.image_size, p.evaluate.batch_size
    manifest = json.loads((data_dir / "manifest.json").read_text())
    n = {s: manifest["splits"][s]["count"] for s in ("val", "test")}
    acc = {s: accuracy_on(model, data_dir, s, size, batch) for s in n}
    flip = {s: accuracy_on(model, data_dir, s, size, batch, flip=True) for s in n}
    last = result.history[-1] if result.history else {}
    return {"heldout": sum(acc[s] * n[s] for s in n) / sum(n.values()), "heldout_images": sum(n.values()),
            "heldout_flip": sum(flip[s] * n[s] for s in n) / sum(n.values()),
            **acc, "train_accuracy": last.get("accuracy"), "epochs": result.epochs_run, "seconds": round(seconds, 1),
            "images_per_second": round(result.images_seen / max(result.train_seconds, 1e-9), 2)}


def parent(name: str, names: list[str]) -> str:
    """The config a config adds one choice to: crop+ema -> crop when crop ran, else the first config."""
    head = name.rsplit("+", 1)[0]
    return head if "+" in name and head in names else names[0]


def table(rows: list[dict], names: list[str]) -> str:
    """Mean and spread per config, and the paired difference from the config it adds one choice to."""
    by = {(r["config"], r["split"]): r for r in rows}
    lines = ["| config | splits | held-out accuracy, mean ± sd | per split | paired change | "
             "flip-averaged (2x inference), change | last epoch's train acc | epochs | train images/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        mine = sorted((r for r in rows if r["config"] == name), key=lambda r: r["split"])
        if not mine:
            continue
        base = parent(name, names)
        acc = [r["heldout"] for r in mine]
        diffs = [r["heldout"] - by[(base, r["split"])]["heldout"] for r in mine if (base, r["split"]) in by]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        diff = "" if name == base or not diffs else (
            f"{statistics.mean(diffs):+.3f}" + (f" ± {statistics.stdev(diffs):.3f}" if len(diffs) > 1 else "")
            + f" vs {base}")
        train = [r["train_accuracy"] for r in mine if r.get("train_accuracy") is not None]
        flips = [(r["heldout_flip"], r["heldout_flip"] - r["heldout"]) for r in mine if "heldout_flip" in r]
        flip = (f"{statistics.mean(f for f, _ in flips):.3f}, {statistics.mean(d for _, d in flips):+.3f}"
                if flips else "")
        lines.append(f"| {name} | {len(mine)} | {statistics.mean(acc):.3f} ± {sd:.3f} | "
                     + " ".join(f"{a:.3f}" for a in acc) + f" | {diff} | {flip} | "
                     + (f"{statistics.mean(train):.2f}" if train else "") + " | "
                     + f"{statistics.mean(r['epochs'] for r in mine):.1f} | "
                     + f"{statistics.mean(r['images_per_second'] for r in mine):.1f} |")
    return "\n".join(lines)


def main() -> None:
    """Run every (split, config) pair not yet in --out, in turn; print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="a folder of <class>/<image> folders")
    ap.add_argument("--config", action="append", required=True, help="NAME or NAME:key=value,key=value")
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--out", type=Path, default=Path("scratch_recipe.jsonl"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/flowerpipe-scratch-recipe"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one run, in its own process
    args = ap.parse_args()
    configs = dict(overrides(c) for c in args.config)
    if args.one:
        split_dir, name = args.one.split("::")
        print(json.dumps(one_run(Path(split_dir), args.minutes, configs[name], args.work / f"run-{name}")))
        return
    if not args.data.is_dir():
        raise UserError(f"{args.data}: not a folder of class folders")
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    done = {(r["config"], r["split"], r["minutes"]) for r in rows}
    for split in range(1000, 1000 + args.splits):
        data_dir = records(args.data, args.work, split)
        for name in configs:
            if (name, split, args.minutes) in done:
                continue
            cmd = [sys.executable, __file__, str(args.data), "--minutes", str(args.minutes), "--work", str(args.work),
                   "--one", f"{data_dir}::{name}", *[f"--config={c}" for c in args.config]]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            (args.work / f"{name}-{split}-{args.minutes:g}min.log").write_text(proc.stdout + proc.stderr)
            if proc.returncode:
                raise UserError(f"config {name}, split {split} failed:\n{proc.stderr[-3000:]}")
            row = {"config": name, "split": split, "minutes": args.minutes, **json.loads(proc.stdout.splitlines()[-1])}
            print(json.dumps(row), flush=True)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
    print(table([r for r in rows if r["minutes"] == args.minutes], list(configs)))


if __name__ == "__main__":
    run_script(main)
