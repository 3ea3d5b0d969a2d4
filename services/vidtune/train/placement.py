"""Where a training job runs on a cluster: GPUs, node selection, memory and deadline from its config.

The generic launch machinery (local subprocess, Kubernetes Job, status reconciler) lives in
vidtune.platform.launchers; this module only says what a training record needs from a node.
"""
from __future__ import annotations

from vidtune.platform import kube
from vidtune.platform.launchers import timeout_of

from .config import DEFAULT_NODE_SELECTOR
from .tasks import config_of


def training_placement(record: dict) -> dict:
    """JobSpec overrides of a training record (see `kube.worker_job`).

    GPUs follow the config (one process per GPU under torchrun); memory and CPU come from the cluster
    settings, scaled per GPU, unless the spec names them (`cpu`, `memory`, `memory_limit`, `shm`).
    A config whose node_selector differs from the default V100 label places the run elsewhere.
    """
    spec = record["spec"]
    cfg = config_of(spec)
    gpus = max(1, cfg.num_gpus) if cfg.device == "cuda" else 0
    placement: dict = {
        "gpus": gpus,
        "active_deadline_seconds": int(timeout_of(spec)),
        "labels": {"vidtune.io/model": cfg.spec.name},
    }
    if gpus and cfg.node_selector and cfg.node_selector != DEFAULT_NODE_SELECTOR:
        placement["node_selector"] = dict(cfg.node_selector)
    for key, field in (("cpu", "cpu_request"), ("memory", "memory_request"), ("memory_limit", "memory_limit"),
                       ("shm", "shm_size")):
        if spec.get(key):
            placement[field] = str(spec[key])
    if spec.get("backoff_limit") is not None:
        placement["backoff_limit"] = int(spec["backoff_limit"])
    return placement


def training_job(record: dict, settings: kube.ClusterSettings | None = None, command: list[str] | None = None):
    """The batch/v1 Job of a training record. By default the pod runs `vidtune worker` on the stored
    record; `command` makes it self-contained."""
    return kube.worker_job(record, settings, command=command, **training_placement(record))


def training_trainjob(record: dict, settings: kube.ClusterSettings | None = None,
                      command: list[str] | None = None) -> dict:
    """The Kubeflow TrainJob of a multi-node training record: `num_nodes` pods of `num_gpus` GPUs, each
    starting `command` through `vidtune train launch` (torchrun from the runtime's PET_* variables)."""
    cfg = config_of(record["spec"])
    job = training_job(record, settings, command=command)
    launch = ["vidtune", "train", "launch", "--", *(command or kube.worker_command("train", record["id"]))]
    return kube.build_trainjob(job, launch, nodes=cfg.num_nodes, gpus=training_placement(record)["gpus"])
