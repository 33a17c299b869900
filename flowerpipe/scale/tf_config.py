"""TF_CONFIG for one pod of a Kubeflow Trainer v2 TrainJob, from the pod's index, then the command it runs.

Kubeflow Trainer v2 has no TensorFlow runtime (TFJob was dropped, kubeflow/trainer#2699): a plain runtime
(deploy/kubeflow-trainjob.yaml) runs numNodes pods of one Indexed Job inside a JobSet named after the TrainJob.
Pod i has JOB_COMPLETION_INDEX=i and answers at <jobset>-<replicatedJob>-0-<i>.<jobset> (JobSet's DNS
hostnames). Every worker gets the same cluster and its own index, as Ray Train's TensorflowConfig writes it:

    python -m flowerpipe.scale.tf_config -- dvc repro train

reads JOB_COMPLETION_INDEX, FLOWERPIPE_NUM_NODES (the TrainJob's numNodes), JOBSET_NAME and REPLICATED_JOB_NAME
(the pod's JobSet annotations, through the downward API) and FLOWERPIPE_TF_PORT (default 2222).
"""

from __future__ import annotations

import json
import os
import sys

from flowerpipe.errors import UserError, run_script

PORT = 2222


def worker_hosts(nodes: int, jobset: str, replicated_job: str = "node", port: int = PORT) -> list[str]:
    """host:port of every pod of the replicated job, by index."""
    return [f"{jobset}-{replicated_job}-0-{i}.{jobset}:{port}" for i in range(nodes)]


def tf_config(index: int, nodes: int, jobset: str, replicated_job: str = "node", port: int = PORT) -> dict:
    """The TF_CONFIG of worker `index` of `nodes`."""
    if not 0 <= index < nodes:
        raise UserError(f"JOB_COMPLETION_INDEX {index} is outside the {nodes} nodes (0..{nodes - 1})")
    return {"cluster": {"worker": worker_hosts(nodes, jobset, replicated_job, port)},
            "task": {"type": "worker", "index": index}}


def from_env(env: dict[str, str]) -> dict:
    """The TF_CONFIG the pod's environment describes; one line naming what is missing."""
    missing = [k for k in ("JOB_COMPLETION_INDEX", "FLOWERPIPE_NUM_NODES", "JOBSET_NAME") if not env.get(k)]
    if missing:
        raise UserError(f"TF_CONFIG from the pod's index needs {', '.join(missing)} "
                        "(see deploy/kubeflow-trainjob.yaml)")
    try:
        index, nodes, port = (int(env["JOB_COMPLETION_INDEX"]), int(env["FLOWERPIPE_NUM_NODES"]),
                              int(env.get("FLOWERPIPE_TF_PORT", PORT)))
    except ValueError as exc:
        raise UserError(f"TF_CONFIG from the pod's index: {exc}") from None
    return tf_config(index, nodes, env["JOBSET_NAME"], env.get("REPLICATED_JOB_NAME") or "node", port)


def main(argv: list[str] | None = None) -> int:
    """Set TF_CONFIG from the environment and exec the command after `--` (print TF_CONFIG without one)."""
    args = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(args[:args.index("--")] if "--" in args else args):
        print(__doc__)
        return 0
    command = args[args.index("--") + 1:] if "--" in args else args
    config = json.dumps(from_env(dict(os.environ)))
    if not command:
        print(config)
        return 0
    os.environ["TF_CONFIG"] = config
    print(f"TF_CONFIG={config}", file=sys.stderr, flush=True)
    os.execvp(command[0], command)
    return 1  # not reached: exec replaces this process


if __name__ == "__main__":
    run_script(main)
