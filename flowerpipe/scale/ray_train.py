"""Training on Ray: Ray Train's TensorflowTrainer starts the workers and writes each one's TF_CONFIG; every worker
runs the train stage's own work (flowerpipe.training.run.train_and_save) under MultiWorkerMirroredStrategy, that is
flowerpipe's custom multi-worker loop (Keras 3's fit() fails there, keras-team/keras#20585).

The first worker on the driver's machine (worker 0 on one machine) writes the stage's declared outputs there; every
other worker r writes the same files under paths.train_dir/workers/<r>/ in its own checkout.
Every worker reads the project from the same folder: on one machine the checkout the driver runs in; on a Ray
cluster of several machines, a checkout of the same commit at the same path on each (`dvc pull` there).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from flowerpipe.errors import UserError
from flowerpipe.jsonio import read_json
from flowerpipe.params import Params

log = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 256 * 1024**2  # a local Ray's object store: the workers pass only small records through it


def _worker(config: dict) -> None:
    """One Ray Train worker: TF_CONFIG is set (Ray's TensorflowConfig backend); train and save; report the record."""
    import ray.train

    from flowerpipe.quiet import quiet_tensorflow
    from flowerpipe.training.run import Outputs, train_and_save

    quiet_tensorflow()  # as the stage's own process does: TensorFlow's log noise off, real errors shown
    os.chdir(config["cwd"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    p: Params = config["params"]
    # Ray Train groups a node's workers under consecutive ranks, but the driver's node need not hold rank 0.
    declared = ray.get_runtime_context().get_node_id() == config["driver_node"] and context.get_local_rank() == 0
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker", [])
    out = Outputs.of(p) if declared else Outputs.of(p).for_worker(rank)
    record = train_and_save(p, "multi_worker", out, {"launcher": "ray", "tf_config_workers": cluster, "rank": rank})
    ray.train.report({k: v for k, v in record.items() if k != "history"} | {"worker": rank})  # a barrier in Train V2


def trainer_class(local: bool):
    """Ray Train's TensorflowTrainer; on a Ray this run starts and stops itself, without its placement-group
    cleaner, whose one job (removing the run's placement group if the controller dies) ends with that Ray anyway,
    and which warns every few seconds there that the State API does not answer (the dashboard serves that API,
    and ray[train] installs none)."""
    from ray.train.tensorflow import TensorflowTrainer

    if not local:
        return TensorflowTrainer

    class LocalTensorflowTrainer(TensorflowTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if type(c).__name__ != "PlacementGroupCleanerCallback"]

    return LocalTensorflowTrainer


def start_local_ray(workers: int) -> None:
    """A Ray on this machine for the run: one logical CPU per worker at least, no dashboard, a small object store
    (on loopback when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set before ray was imported, as train_on_ray does)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a run's own Ray reports nowhere unless asked to
    ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False,
             object_store_memory=OBJECT_STORE_BYTES, log_to_driver=True)


def train_on_ray(p: Params, cwd: Path | None = None) -> dict:
    """Run training on train.ray_workers Ray Train workers; return the record of the one that wrote the declared
    outputs (reports/train.json).

    Connects to the Ray cluster at RAY_ADDRESS when it is set (`ray start --head` on one machine, `ray start
    --address=...` on the others), else starts a Ray on this machine for the run and stops it after.
    """
    local = not os.environ.get("RAY_ADDRESS")
    if local:
        # A Ray of this run's own, on this machine: every Ray process, and so each worker's TF_CONFIG address, on
        # loopback (127.0.0.1), as Ray runs its single-machine clusters on macOS and Windows; read when ray is
        # imported, here and by every process it starts.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # The workers' prints once each (Ray Train V2 otherwise logs each print and also tees it to the redirected stdout).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    workers = p.train.ray_workers
    storage = Path(p.paths.train_dir).resolve() / "ray"  # Ray Train's run records; removed after a success
    record_path = Path(p.paths.reports) / "train.json"
    record_path.unlink(missing_ok=True)  # a declared output: only this run's record may be read back below
    started = local and not ray.is_initialized()
    if started:
        start_local_ray(workers)
    elif not ray.is_initialized():
        ray.init()  # the cluster at RAY_ADDRESS
    try:
        trainer = trainer_class(started)(
            _worker, train_loop_config={"cwd": str((cwd or Path.cwd()).resolve()), "params": p,
                                        "driver_node": ray.get_runtime_context().get_node_id()},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="train", storage_path=os.environ.get("FLOWERPIPE_RAY_STORAGE", str(storage)),
                                 failure_config=FailureConfig(max_failures=0)))
        try:
            trainer.fit()
        except Exception as exc:  # ray.train.TrainingFailedError: the workers' tracebacks are printed above it
            raise UserError(f"train.strategy ray: training on {workers} Ray workers failed: {failure(exc)}") from exc
    finally:
        if started:
            ray.shutdown()
    if storage.is_dir():
        import shutil

        shutil.rmtree(storage)
    record = read_json(record_path)  # written by the first worker on this machine
    if not record or record.get("launcher") != "ray":
        raise UserError(f"train.strategy ray: no Ray worker ran on this machine, so its outputs ({p.paths.model}) "
                        "are in the checkouts of the others; give this node a CPU for Ray, or run the stage there")
    log.info("Ray Train: %d workers (TF_CONFIG workers %s), worker %d's saved model %s", workers,
             ", ".join(record.get("tf_config_workers", [])), record.get("rank", 0), p.paths.model)
    return record


def failure(exc: BaseException) -> str:
    """What went wrong, in one line: the first failed worker's own error (its last traceback line), else Ray's."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        lines = [line.strip() for line in str(failures[rank]).splitlines() if line.strip()]
        return f"worker {rank}: {lines[-1] if lines else type(failures[rank]).__name__}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
