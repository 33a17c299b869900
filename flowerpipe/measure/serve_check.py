"""The serve_check stage's work: serve the pipeline's format on loopback, check its answers over REST and gRPC against
local inference, load it, set it beside the benchmark's figures, and try each batcher setting."""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowerpipe.data.tfrecord import arrays
from flowerpipe.formats.registry import find_built, load
from flowerpipe.measure.loadtest import (
    best_under_budget,
    check_answers,
    check_grpc_answers,
    free_ports,
    jpeg_requests,
    load_grpc,
    params_path,
    running_server,
    tuned_params,
)
from flowerpipe.measure.loadtest import load as load_test
from flowerpipe.measure.timing_lock import timing_lock
from flowerpipe.params import Params
from flowerpipe.serving.decode import decode_all
from flowerpipe.serving.main import pipeline_format


@dataclass(frozen=True)
class Reference:
    """Test images (as a PNG round trip keeps them) and their JPEG requests, with local inference's answers to each."""

    images: np.ndarray
    expected: np.ndarray
    jpegs: list[bytes]
    expected_jpeg: np.ndarray


@dataclass(frozen=True)
class Checked:
    """What serve_check found: answers per protocol, load per concurrency, the batcher settings tried and kept."""

    format: str
    images: int
    answers: dict[str, dict]
    levels: dict[str, dict]
    grpc_levels: dict[str, dict]
    settings: list[dict]
    best: dict[str, dict]
    compared: dict[str, dict]
    budget_ms: float

    def record(self) -> dict:
        """reports/serve.json."""
        return {"format": self.format, "images": self.images, "answers": self.answers, "load": self.levels,
                "load_grpc": self.grpc_levels, "vs_benchmark": self.compared,
                "tuning": {"budget_ms": self.budget_ms, "settings": self.settings, "best": self.best}}

    def failures(self) -> list[str]:
        """Each protocol's level, and each batcher setting's level, that had errors or answers unlike local ones."""
        bad = [f"{proto} {lv}" for proto, runs in (("REST", self.levels), ("gRPC", self.grpc_levels))
               for lv, r in runs.items() if r["errors"] or r["mismatches"]]
        return bad + [f"max_batch {t['max_batch']} window {t['batch_window_ms']:g} {lv}" for t in self.settings
                      for lv in self.levels if t[lv]["errors"] or t[lv]["mismatches"]]

    def agrees(self) -> bool:
        """Whether every form of the answer check picked local inference's top-1 class for every image."""
        return not any(a["top1_agreement"] < 1.0 for a in self.answers.values())

    def lines(self) -> list[str]:
        """The stage's printed summary: agreement per form, load per protocol and level, the setting kept per level."""
        out = [f"{form:8s} top-1 agreement {a['top1_agreement']:.3f}  max|dp| {a['max_prob_diff']:.2e}"
               for form, a in self.answers.items()]
        for level, r in self.levels.items():
            extra = ", ".join(f"{k} {v}" for k, v in self.compared[level].items())
            out.append(f"{level}: {r['requests']} b64 JPEG requests, {r['errors']} errors, {r['mismatches']} "
                       f"mismatches, p50 {r['latency_ms_p50']:.1f} ms, p99 {r['latency_ms_p99']:.1f} ms, "
                       f"{r['throughput_rps']:.1f} req/s{'; ' + extra if extra else ''}")
        for level, r in self.grpc_levels.items():
            out.append(f"{level}: {r['requests']} gRPC uint8 pixel requests (TF Serving Predict), {r['errors']} "
                       f"errors, {r['mismatches']} mismatches, p50 {r['latency_ms_p50']:.1f} ms, p99 "
                       f"{r['latency_ms_p99']:.1f} ms, {r['throughput_rps']:.1f} req/s")
        for level, b in self.best.items():
            out.append(f"{level}: best batcher setting within p99 {self.budget_ms:g} ms: " + (
                b["none"] if "none" in b else f"max_batch {b['max_batch']}, batch_window_ms "
                f"{b['batch_window_ms']:g}: {b['throughput_rps']:.1f} req/s, p99 {b['latency_ms_p99']:.1f} ms"))
        return out


def beside_benchmark(levels: dict[str, dict], cells: dict[str, dict]) -> dict[str, dict]:
    """Each load level next to the runtime's own figures: c1 against batch-1 latency, cN against batch-N images/s."""
    out = {}
    for level, r in levels.items():
        c = int(level[1:])
        row: dict = {}
        b1, bc = cells.get("b1", {}), cells.get(f"b{c}", {})
        if c == 1 and b1.get("status") == "ok":
            row["runtime_batch1_ms"] = b1["latency_ms_median"]
            row["added_ms_p50"] = round(r["latency_ms_p50"] - b1["latency_ms_median"], 3)
        if bc.get("status") == "ok":
            row[f"runtime_batch{c}_ips"] = bc["throughput_ips"]
            row["fraction_of_runtime"] = round(r["throughput_rps"] / bc["throughput_ips"], 3)
        out[level] = row
    return out


def reference(p: Params, fmt: str) -> Reference:
    """16 test images and their JPEG requests (the model's size, and larger photos), answered by local inference."""
    size = p.model.image_size
    images, _ = arrays(p.paths.tfrecords, "test", size, limit=16)
    images = np.rint(images).astype(np.float32)  # what a PNG round trip keeps exactly
    runner = load(find_built(p, fmt), "cpu", p.serve.threads)
    expected = runner.predict(images)
    jpegs = jpeg_requests(images, sizes=(0, 2 * size, 4 * size))  # the model's size, and larger photos
    expected_jpeg = runner.predict(decode_all(jpegs, size))  # the server decodes with this same code
    runner.close()
    return Reference(images, expected, jpegs, expected_jpeg)


def serve_and_load(p: Params, fmt: str, ref: Reference) -> tuple[dict, dict, dict]:
    """(answers, REST load, gRPC load) from one server: its answers checked over both protocols, then loaded at each
    concurrency under the timing lock."""
    port, grpc_port = free_ports(2)
    with running_server(["--format", fmt], port, params_file=params_path(), grpc_port=grpc_port) as server:
        answers = check_answers(server.url, p.model.name, ref.images, ref.expected)
        answers.update(check_grpc_answers(server.grpc, p.model.name, ref.images, ref.expected))
        with timing_lock("serve_check"):
            levels = {f"c{c}": load_test(server.url, p.model.name, ref.jpegs, ref.expected_jpeg, c, p.serve.requests,
                                         pid=server.pid) for c in p.serve.concurrency}
            grpc_levels = {f"c{c}": load_grpc(server.grpc, p.model.name, ref.images, ref.expected, c,
                                              p.serve.requests) for c in p.serve.concurrency}
    return answers, levels, grpc_levels


def tune(p: Params, fmt: str, ref: Reference) -> list[dict]:
    """The batcher settings tried: one server each, after the first has stopped, REST load as in serve_and_load."""
    settings = []
    with timing_lock("serve_check"), tempfile.TemporaryDirectory() as tmp:
        for max_batch, window in itertools.product(p.serve.tune_max_batch, p.serve.tune_batch_window_ms):
            tuned = tuned_params(params_path(), Path(tmp), max_batch, window)
            with running_server(["--format", fmt], free_ports(1)[0], params_file=tuned) as trial:
                settings.append({"max_batch": max_batch, "batch_window_ms": window, **{
                    f"c{c}": load_test(trial.url, p.model.name, ref.jpegs, ref.expected_jpeg, c, p.serve.requests)
                    for c in p.serve.concurrency}})
    return settings


def run(p: Params, bench: dict) -> Checked:
    """Check, load and tune the server of the pipeline's format; bench is the benchmark stage's record."""
    fmt = pipeline_format(p)
    ref = reference(p, fmt)
    answers, levels, grpc_levels = serve_and_load(p, fmt, ref)
    settings = tune(p, fmt, ref)
    return Checked(format=fmt, images=int(len(ref.images)), answers=answers, levels=levels, grpc_levels=grpc_levels,
                   settings=settings, best=best_under_budget(settings, list(levels), p.deploy.latency_budget_ms),
                   compared=beside_benchmark(levels, bench.get("results", {}).get(fmt, {}).get("cpu", {})),
                   budget_ms=p.deploy.latency_budget_ms)
