"""`make mutation`: the test suite's strength, measured. mutmut mutates the modules that compute what flowerpipe
reports or decides on (evaluate, recommend, the benchmark's statistics, the split, the training throughput) and the
request validation, runs the fast tests that pin them against each mutant, and this prints the score of the
functions in scope (SCOPE), module by module, with every mutant that survived: those explained as equivalent
(EQUIVALENT: no test can tell them from the code) apart from the rest.

Usage: python tools/mutation.py [--reuse] [--max-children N]   (from the repository's root; docs/testing.md)
The configuration (files mutated, tests run) is [tool.mutmut] in pyproject.toml; results go to mutants/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# The functions that compute a reported or deciding number, or refuse a bad request: only these are mutated. The
# rest of these files is not (matmul peaks and worker processes: measurements, not arithmetic on known inputs;
# metadata and answers; recommend's render and _line: the decision's prose, whose figures decide() computes).
SCOPE = {
    "flowerpipe/evaluate.py": ["score", "agreement", "predict_batches"],
    "flowerpipe/recommend.py": ["floor_reason", "_status", "_cells", "_spread", "_choice", "decide", "headline"],
    "flowerpipe/bench.py": ["summarize", "merge_rounds"],
    "flowerpipe/data/split.py": ["_count", "stratified_split"],
    "flowerpipe/training/throughput.py": ["layer_flops", "training_flops", "_leaves"],
    "flowerpipe/training/epochs.py": ["EpochLog.epoch", "EpochLog.replay", "EpochLog.callback"],
    "flowerpipe/serving/tfs.py": ["pixels", "_named", "parse_predict"],
    "flowerpipe/serving/v2.py": ["_split", "bytes_elements", "parse_infer", "pixel_tensor", "_request_id",
                                "_requested_outputs"],
    "flowerpipe/serving/tensors.py": ["tensor_array", "tfs_images", "v2_images"],
    "flowerpipe/serving/decode.py": ["b64_bytes", "decode_image", "decode_all"],
}

# Surviving mutants no test can kill, each with why (mutmut's names: they change when the function's code does).
EQUIVALENT: dict[str, str] = {}

KILLED = {1, 3, 37}  # a test failed (or pytest itself), or the type check caught it
STATUS = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout", 24: "timeout", -24: "timeout",
          152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault", None: "not checked"}


def mangled(function: str) -> str:
    """mutmut's name for a function ('x_f') or a method ('xǁClassǁmethod')."""
    if "." in function:
        cls, method = function.split(".")
        return f"xǁ{cls}ǁ{method}"
    return f"x_{function}"


def results(root: Path) -> dict[str, dict[str, int | None]]:
    """Per file in scope: mutant name -> exit code, for the mutants of the scoped functions."""
    out = {}
    for path, functions in SCOPE.items():
        meta = root / "mutants" / f"{path}.meta"
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        module = path.removesuffix(".py").replace("/", ".")
        wanted = {f"{module}.{mangled(f)}" for f in functions}
        out[path] = {k: v for k, v in codes.items() if k.rsplit("__mutmut_", 1)[0] in wanted}
    return out


def status(code: int | None) -> str:
    """killed, survived, no tests, timeout... for a mutant's exit code."""
    return "killed" if code in KILLED else STATUS.get(code, "suspicious")


def report(root: Path) -> float:
    """Print the score per module and overall, then the survivors; return the overall score (killed / scored)."""
    table = results(root)
    total = Counter()
    print(f"{'module':36s} {'mutants':>7s} {'killed':>6s} {'equiv':>5s} {'other':>5s} {'score':>6s}")
    for path, codes in table.items():
        c = Counter(status(v) for v in codes.values())
        equivalent = sum(1 for k, v in codes.items() if k in EQUIVALENT and status(v) != "killed")
        other = len(codes) - c["killed"] - equivalent
        scored = len(codes) - equivalent
        total.update(mutants=len(codes), killed=c["killed"], equivalent=equivalent, other=other)
        score = c["killed"] / scored if scored else 1.0
        print(f"{path:36s} {len(codes):7d} {c['killed']:6d} {equivalent:5d} {other:5d} {score:6.1%}")
    scored = total["mutants"] - total["equivalent"]
    score = total["killed"] / scored if scored else 1.0
    print(f"{'all in scope':36s} {total['mutants']:7d} {total['killed']:6d} {total['equivalent']:5d} "
          f"{total['other']:5d} {score:6.1%}")
    print(f"mutation score: {score:.1%} ({total['killed']} of {scored} non-equivalent mutants killed; "
          f"{total['killed'] / max(total['mutants'], 1):.1%} of all {total['mutants']})")
    survivors = [(k, status(v)) for codes in table.values() for k, v in sorted(codes.items(), key=_order)
                 if status(v) != "killed"]
    left = [(k, s) for k, s in survivors if k not in EQUIVALENT]
    if left:
        print(f"\nnot killed ({len(left)}; see each with: mutmut show NAME):")
        for k, s in left:
            print(f"  {k}: {s}")
    explained = [k for k, _ in survivors if k in EQUIVALENT]
    if explained:
        print(f"\nequivalent ({len(explained)}):")
        for k in explained:
            print(f"  {k}: {EQUIVALENT[k]}")
    return score


def _order(item: tuple[str, int | None]) -> tuple[str, int]:
    name, number = item[0].rsplit("__mutmut_", 1)
    return name, int(number)


def main(argv: list[str] | None = None) -> int:
    """Run mutmut (from scratch unless --reuse) and print the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse", action="store_true", help="keep mutants/ from an earlier run (mutmut reruns changes)")
    ap.add_argument("--report-only", action="store_true", help="print the report of the last run, run nothing")
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    root = Path.cwd()
    if not (root / "pyproject.toml").exists():
        print("error: run from the repository's root (make mutation)", file=sys.stderr)
        return 1
    if not args.report_only:
        if not args.reuse:
            shutil.rmtree(root / "mutants", ignore_errors=True)
        # one thread per BLAS/OpenMP/TensorFlow pool: mutmut forks a worker per mutant, --max-children at once
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        patterns = [f"{path.removesuffix('.py').replace('/', '.')}.{mangled(f)}__mutmut_*"
                    for path, functions in SCOPE.items() for f in functions]
        run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children),
                              *patterns], env=env, stdout=subprocess.DEVNULL)
        if run.returncode:
            print(f"error: mutmut run exited {run.returncode}", file=sys.stderr)
            return run.returncode
    report(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
