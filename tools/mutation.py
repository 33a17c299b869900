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
    "flowerpipe/measure/scores.py": ["score", "agreement", "predict_batches"],
    "flowerpipe/decide/recommend.py": ["floor_reason", "_status", "_cells", "_spread", "_choice", "decide", "headline"],
    "flowerpipe/measure/harness.py": ["summarize", "merge_rounds"],
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
_SPLIT = ("another split of the weight's path: each keeps a suffix ending in the path's last segment, so endswith("
          "'kernel') is the path's own endswith either way")
_KIND = "a numpy dtype kind is one letter, never 'X'"
_DRAFT = ("draft's mode only picks libjpeg's output colour space and to_rgb converts after it: L, RGB and CMYK JPEGs "
          "decode to the same pixels either way (checked)")
_FLOAT64 = "dtype float64 dropped: latencies are Python floats, float64 anyway"
EQUIVALENT: dict[str, str] = {
    "flowerpipe.measure.scores.x_score__mutmut_15": "zero_division=0 dropped: scikit-learn's default ('warn') also "
                                                    "scores an undefined precision or recall 0, with a warning",
    "flowerpipe.decide.recommend.x__choice__mutmut_77": "(v,) * 3 for (v,) * 2: the tuple is indexed at 0 and 1 only",
    "flowerpipe.decide.recommend.x__choice__mutmut_87": "(v,) * 3 for (v,) * 2: the tuple is indexed at 0 and 1 only",
    "flowerpipe.decide.recommend.x_decide__mutmut_185": "lower_is_better None for False: only its truth is used",
    "flowerpipe.decide.recommend.x_decide__mutmut_201": "lower_is_better None for False: only its truth is used",
    "flowerpipe.measure.harness.x_summarize__mutmut_3": _FLOAT64,
    "flowerpipe.measure.harness.x_summarize__mutmut_5": _FLOAT64,
    "flowerpipe.training.throughput.x_layer_flops__mutmut_3": _SPLIT,
    "flowerpipe.training.throughput.x_layer_flops__mutmut_6": _SPLIT,
    "flowerpipe.training.throughput.x_layer_flops__mutmut_7": _SPLIT,
    "flowerpipe.training.throughput.x_layer_flops__mutmut_8": _SPLIT,
    "flowerpipe.training.throughput.x_layer_flops__mutmut_9": _SPLIT,
    "flowerpipe.training.throughput.x_layer_flops__mutmut_10": "[+1] for [-1] of rsplit('/', 1): a Keras 3 weight "
                                                               "path always holds a '/', so there are two parts",
    "flowerpipe.serving.tfs.x_pixels__mutmut_11": _KIND,
    "flowerpipe.serving.tensors.x_tensor_array__mutmut_44": _KIND,
    "flowerpipe.serving.tensors.x_tensor_array__mutmut_29": "dtype dropped: protobuf gives Python floats and ints, "
                                                            "float64 and int64 anyway (an empty field is not checked)",
    "flowerpipe.serving.tensors.x_tensor_array__mutmut_31": "dtype dropped: protobuf gives Python floats and ints, "
                                                            "float64 and int64 anyway (an empty field is not checked)",
    "flowerpipe.serving.tensors.x_tensor_array__mutmut_37": "float64 for integer fields too: int_val holds int32 "
                                                            "values, exact in float64; range check and cast agree",
    "flowerpipe.serving.tensors.x_tensor_array__mutmut_64": "one value filling a shape as a list for numbers too: "
                                                            "asarray of it is np.full's array",
    "flowerpipe.serving.tensors.x_tensor_array__mutmut_70": "np.full without a dtype takes the fill value's, a numpy "
                                                            "scalar of that dtype",
    "flowerpipe.serving.tensors.x_tensor_array__mutmut_73": "np.full without a dtype takes the fill value's, a numpy "
                                                            "scalar of that dtype",
    "flowerpipe.serving.tensors.x_tfs_images__mutmut_59": "pixels() without the signature: it only refuses non-uint8 "
                                                          "values under serving_uint8, which needs DT_UINT8 already",
    "flowerpipe.serving.decode.x_decode_image__mutmut_6": "every warning an error, not only the bomb warning: no "
                                                          "image tried (PNG, palette PNG with transparency, JPEG in L, "
                                                          "RGB, CMYK, BMP) makes Pillow warn while decoding",
    "flowerpipe.serving.decode.x_decode_image__mutmut_17": _DRAFT,
    "flowerpipe.serving.decode.x_decode_image__mutmut_21": _DRAFT,
    "flowerpipe.serving.decode.x_decode_image__mutmut_22": _DRAFT,
    "flowerpipe.serving.decode.x_decode_image__mutmut_38": "reducing_gap=None dropped: None is Image.resize's default",
}

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
