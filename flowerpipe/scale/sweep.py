"""A sweep across machines: each node runs one experiment with `dvc exp run` and shares it with `dvc exp push`.

DVC does not distribute runs (`dvc machine` was removed, treeverse/dvc#9837); its maintainers' pattern is one
`dvc exp run` per node and a shared Git and DVC remote. A sweep file lists the runs; node i (a Kubernetes Indexed
Job's JOB_COMPLETION_INDEX, or a CI matrix index) runs entry i:

    name: lr                      # experiment names: lr-0, lr-1, ...
    targets: [train]              # stages to run (default: the whole pipeline)
    grid:                         # every combination, in this order (or `runs:` with a list of mappings)
      train.scratch_learning_rate: [0.001, 0.002]
      train.batch_size: [16, 32]

`python -m flowerpipe.scale.sweep SWEEP.yaml --count` prints how many runs (the Job's completions);
`python -m flowerpipe.scale.sweep SWEEP.yaml [--index I] [--git-remote origin]` runs and pushes entry I.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from flowerpipe.errors import UserError, exit_code


@dataclass(frozen=True)
class Run:
    """One experiment of the sweep: its name and the params it sets."""

    name: str
    params: dict

    def set_args(self) -> list[str]:
        """`-S key=value` for each param (values as YAML reads them back)."""
        args = []
        for key, value in self.params.items():
            args += ["-S", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
        return args


def load(path: str | Path) -> tuple[list[Run], list[str]]:
    """The sweep's runs, in order, and the stages to run; one clear line for a malformed file."""
    spec = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise UserError(f"{path}: a sweep needs a name (experiments are called <name>-<index>)")
    if ("grid" in spec) == ("runs" in spec):
        raise UserError(f"{path}: give either grid (param: [values]) or runs (a list of param mappings)")
    if "grid" in spec:
        grid = spec["grid"]
        if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
            raise UserError(f"{path}: grid: each param needs a non-empty list of values")
        combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    else:
        combos = spec["runs"]
        if not isinstance(combos, list) or not combos or not all(isinstance(c, dict) for c in combos):
            raise UserError(f"{path}: runs: a non-empty list of param mappings")
    targets = spec.get("targets") or []
    return [Run(f"{spec['name']}-{i}", combo) for i, combo in enumerate(combos)], list(targets)


def commands(run: Run, targets: list[str], git_remote: str) -> list[list[str]]:
    """What a node runs: the experiment, then `dvc exp push` (its Git ref to git_remote, its outputs to the
    project's default DVC remote)."""
    return [["dvc", "exp", "run", *targets, "-n", run.name, *run.set_args()],
            ["dvc", "exp", "push", git_remote, run.name]]


def main(argv: list[str] | None = None) -> int:
    """Run (or count) one entry of a sweep file; exit 1 with one line when something is wrong."""
    parser = argparse.ArgumentParser(prog="python -m flowerpipe.scale.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the sweep file (YAML)")
    parser.add_argument("--index", type=int, default=None,
                        help="which run (default: $JOB_COMPLETION_INDEX, set by a Kubernetes Indexed Job)")
    parser.add_argument("--git-remote", default="origin", help="where `dvc exp push` sends the experiment")
    parser.add_argument("--count", action="store_true", help="print the number of runs and exit")
    args = parser.parse_args(argv)
    return exit_code(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    """The sweep entry args name: counted, or run and pushed."""
    runs, targets = load(args.sweep)
    if args.count:
        print(len(runs))
        return 0
    index = args.index if args.index is not None else os.environ.get("JOB_COMPLETION_INDEX")
    if index is None:
        raise UserError("no run chosen: pass --index or set JOB_COMPLETION_INDEX")
    if not 0 <= int(index) < len(runs):
        raise UserError(f"{args.sweep}: index {index} is outside its {len(runs)} runs (0..{len(runs) - 1})")
    entry = runs[int(index)]
    print(f"sweep {args.sweep}: run {index} of {len(runs)}: {entry.name} {' '.join(entry.set_args())}", flush=True)
    for cmd in commands(entry, targets, args.git_remote):
        if subprocess.run(cmd).returncode != 0:
            raise UserError(f"{' '.join(cmd)} failed (its output is above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
