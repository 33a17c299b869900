"""Training on Ray: Ray Train's TensorflowTrainer starts the workers and writes each one's TF_CONFIG; every worker
runs the train stage's own work (flowerpipe.train.train_and_save) under MultiWorkerMirroredStrategy, that is
flowerpipe's custom multi-worker loop (Keras 3's fit() fails there, keras-team/keras#20585).

Worker 0 writes the stage's declared outputs; worker r > 0 writes the same files under paths.train_dir/workers/<r>/.
Every worker reads the project from the same folder: on one machine the checkout the driver runs in; on a Ray
cluster of several machines, a checkout of the same commit at the same path on each (`dvc pull` there).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flowerpipe.errors import UserError
from flowerpipe.params import Params

log = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 256 * 1024**2  # a local Ray's object store: the workers pass only small records through it


def _worker(config: dict) -> None:
    """One Ray Train worker: TF_CONFIG is set (Ray's TensorflowConfig backend); train and save; report the record."""
    import ray.train

    from flowerpipe.quiet import quiet_tensorflow
    from flowerpipe.train import Outputs, train_and_save

    quiet_tensorflow()  # as the stage's own process does: TensorFlow's log noise off, real errors shown
    os.chdir(config["cwd"])
    rank = ray.train.get_context().get_world_rank()
    p: Params = config["params"]
    record = train_and_save(p, "multi_worker", Outputs.of(p).for_worker(rank))
    # Every worker reports (a barrier in Ray Train V2); the trainer's result holds worker 0's.
    ray.train.report({k: v for k, v in record.items() if k != "history"} | {"worker": rank})


def start_local_ray(workers: int) -> None:
    """A Ray on this machine for the run: one logical CPU per worker at least, no dashboard, a small object store."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a run's own Ray reports nowhere unless asked to
    ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False,
             object_store_memory=OBJECT_STORE_BYTES, log_to_driver=True)


def train_on_ray(p: Params, cwd: Path | None = None) -> dict:
    """Run training on train.ray_workers Ray Train workers; return worker 0's record (without its history).

    Connects to the Ray cluster at RAY_ADDRESS when it is set (`ray start --head` on one machine, `ray start
    --address=...` on the others), else starts a Ray on this machine for the run and stops it after.
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    workers = p.train.ray_workers
    storage = Path(p.paths.train_dir).resolve() / "ray"  # Ray Train's run records; removed after a success
    started = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if started:
        start_local_ray(workers)
    elif not ray.is_initialized():
        ray.init()  # the cluster at RAY_ADDRESS
    try:
        trainer = TensorflowTrainer(
            _worker, train_loop_config={"cwd": str((cwd or Path.cwd()).resolve()), "params": p},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="train", storage_path=os.environ.get("FLOWERPIPE_RAY_STORAGE", str(storage)),
                                 failure_config=FailureConfig(max_failures=0)))
        try:
            result = trainer.fit()
        except Exception as exc:  # ray.train.TrainingFailedError: a worker's traceback is printed above it
            raise UserError(f"train.strategy ray: training on {workers} Ray workers failed: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc
    finally:
        if started:
            ray.shutdown()
    if storage.is_dir():
        import shutil

        shutil.rmtree(storage)
    metrics = dict(result.metrics or {})
    log.info("Ray Train: %d workers, worker 0's saved model %s", workers, p.paths.model)
    return metrics
