"""The ship stage's work: the format serve_check served and measured, written as a model repository with the run's
decision, its Triton config and its KServe manifests.

The format shipped is the one serve_check served (serve.format, or for auto the recommendation's lowest batch-1 CPU
latency above the floors), so that every figure the repository carries was measured on that very model.
"""

from __future__ import annotations

import os
from pathlib import Path

from flowerpipe.errors import FormatError
from flowerpipe.pipeline.outputs import atomic
from flowerpipe.ship import kserve, triton
from flowerpipe.ship.repository import Shipped, read, write

REPOSITORY, KSERVE = "repository", "kserve"


def tuning_from(serve: dict, bench_env: dict, fmt: str, default_batch: int, default_window: float) -> tuple:
    """(triton.Tuning, scaleTarget, why, the serve_check setting kept) from serve_check's and benchmark's records."""
    from flowerpipe.formats.registry import precision_of

    best = serve.get("tuning", {}).get("best", {})
    target, why = kserve.scale_target(best)
    kept = best.get(f"c{target}", {})
    kept = {} if "none" in kept else kept  # nothing within the budget: the serve params' own setting
    threads = int(bench_env.get("threads") or os.cpu_count() or 1)
    t = triton.Tuning(max_batch=int(kept.get("max_batch", default_batch)),
                      window_ms=float(kept.get("batch_window_ms", default_window)), threads=threads,
                      precision=precision_of(fmt))
    return t, target, why, kept


def peak_rss(bench: dict, fmt: str) -> float | None:
    """The highest peak RSS (MB) the benchmark measured for this format on the CPU."""
    cells = bench.get("results", {}).get(fmt, {}).get("cpu", {})
    values = [c["peak_rss_mb"] for c in cells.values() if c.get("status") == "ok" and c.get("peak_rss_mb")]
    return max(values) if values else None


def decision_summary(decision: dict, fmt: str) -> dict:
    """Why this format: the recommendation's CPU goals and this format's standing above the floors."""
    cpu = decision.get("devices", {}).get("cpu", {})
    latency = cpu.get("latency", {})
    return {"chosen_by": "recommend (lowest batch-1 CPU latency above the floors)" if latency.get("format") == fmt
            else "serve.format", "floors": decision.get("floors", {}),
            "status": decision.get("formats", {}).get(fmt, {}),
            "cpu": {goal: {k: v for k, v in c.items() if k not in ("spread", "ranking")} for goal, c in cpu.items()}}


def skip(p, reason: str) -> None:
    """The ship stage's output where the served format cannot be shipped: the folder, with why (a skip is data)."""
    from flowerpipe.jsonio import write_json

    with atomic(Path(p.paths.ship)) as tmp:
        tmp.mkdir()
        write_json(tmp / "status.json", {"status": "skipped", "reason": reason})


def ship(p) -> Shipped:
    """Write <paths.ship>/repository/<model.name>/ and <paths.ship>/kserve/ from the run's records (atomically)."""
    from flowerpipe.formats.base import read_labels
    from flowerpipe.formats.registry import find_built, platform
    from flowerpipe.jsonio import read_json

    reports = Path(p.paths.reports)
    serve = read_json(reports / "serve.json", None)
    if not serve or not serve.get("format"):
        raise FileNotFoundError(f"no serve_check record in {reports}: run dvc repro serve_check")
    decision = read_json(reports / "recommend.json", {}) or {}
    bench = read_json(reports / "benchmark.json", {}) or {}
    fmt = serve["format"]
    variant = find_built(p, fmt)
    if not variant.path.exists():
        raise FormatError(f"{variant.path}: {fmt} is not built (run dvc repro)")
    env = bench.get("environment", {})
    t, target, why, kept = tuning_from(serve, env, fmt, p.serve.max_batch, p.serve.batch_window_ms)
    try:
        backend, _ = triton.backend_for(variant.family)
        triton_record = {"backend": backend, "config": triton.CONFIG}

        def config(model_file: Path) -> str:  # from the tensors of the file shipped (names as it has them)
            return triton.render(p.model.name, variant.family, *triton.tensors(variant.family, model_file), t)
    except ValueError as exc:
        config, triton_record = None, {"served": False, "reason": str(exc)}
    manifest = {
        "platform": platform(fmt), "precision": t.precision, "triton": triton_record,
        "decision": decision_summary(decision, fmt),
        "serving": {"kept_setting": kept, "scale_target": target, "scale_target_why": why,
                    "load": serve.get("load", {}), "vs_benchmark": serve.get("vs_benchmark", {}),
                    "budget_ms": serve.get("tuning", {}).get("budget_ms")},
        "measured_on": {k: env.get(k) for k in ("cpu", "cores", "threads")},
    }
    out = Path(p.paths.ship)
    with atomic(out) as tmp:
        shipped = write(tmp / REPOSITORY, p.model.name, fmt, variant.family, variant.path, p.export.version,
                        read_labels(variant.path), p.model.image_size, manifest, config)
        manifests = tmp / KSERVE
        manifests.mkdir()
        (manifests / "servingruntime.yaml").write_text(kserve.runtimes_text(p.ship.image))
        cores = int(env.get("threads") or os.cpu_count() or 1)
        if variant.family in kserve.SLIM_FORMATS:
            services = kserve.inference_services(p.model.name, p.ship.storage_uri, cores,
                                                 kserve.memory(peak_rss(bench, fmt)), target, p.ship.max_replicas)
        else:  # a SavedModel: KServe's TF Serving runtime on the model folder (its version folders)
            services = {"inferenceservice.yaml": kserve.tfserving_service(
                p.model.name, f"{p.ship.storage_uri.rstrip('/')}/{p.model.name}", kserve.tensorflow_version(), cores,
                kserve.memory(peak_rss(bench, fmt)), p.ship.max_replicas)}
        for name, doc in services.items():
            mode = doc["metadata"]["annotations"][kserve.MODE]
            how = (f"Knative mode, REST: scaleTarget {target} ({why})" if mode == "Knative" else
                   f"{mode} mode: one service carrying REST and gRPC, scaled on CPU (its autoscaler has no concurrency "
                   "metric)")
            (manifests / name).write_text(kserve.dump([doc], kserve.HEADER.format(what="the ship stage") +
                                                      f"# {fmt} from {p.ship.storage_uri}; {how}\n"))
    return read(out / REPOSITORY / shipped.folder.name)
