"""Where a training job runs: a subprocess on this machine, or a Kubernetes Job on a GPU node.

Both start the same `vidtune worker --service train --job-id ID`, which runs the record through the
train handler; the launcher only places it. A reconciler flows Kubernetes Job status back into the
records (a pod that dies before it can write FAILED still ends as FAILED, with the reason).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from vidtune.platform import kube
from vidtune.platform.jobs import QUEUED, RUNNING, JobStore

from .tasks import config_of

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 7 * 24 * 3600


def timeout_of(spec: dict) -> float:
    """Seconds a run may take (spec `timeout_s`; 0 or absent: a week)."""
    return float(spec.get("timeout_s") or 0) or DEFAULT_TIMEOUT_S


def worker_argv(job_id: str) -> list[str]:
    exe = shutil.which("vidtune")
    base = [exe] if exe else [sys.executable, "-m", "vidtune.cli"]
    return [*base, "worker", "--service", "train", "--job-id", job_id]


def local_launcher(log_dir: str | Path | None = None):
    """`launchers["local"]`: run the record in a child process, killed after the spec's `timeout_s`."""
    log_dir = Path(log_dir or os.environ.get("VIDTUNE_LOG_DIR", Path.home() / ".cache" / "vidtune" / "logs"))

    def launch(record: dict) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_dir / f"{record['id']}.log", "ab")
        proc = subprocess.Popen(worker_argv(record["id"]), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy())
        timeout = timeout_of(record["spec"])

        def reap() -> None:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.error("training job %s exceeded %.0f s; killing pid %d", record["id"], timeout, proc.pid)
                proc.kill()
                proc.wait()
            finally:
                out.close()

        threading.Thread(target=reap, name=f"reap-{record['id']}", daemon=True).start()
        record.setdefault("labels", {})["pid"] = str(proc.pid)

    return launch


def training_job(record: dict, image: str, namespace: str = "vidtune", command: list[str] | None = None):
    """The batch/v1 Job of a training record, placed by its config (GPUs, nodeSelector, deadline).

    By default the pod runs `vidtune worker` on the stored record; `command` makes it self-contained.
    """
    cfg = config_of(record["spec"])
    gpus = max(1, cfg.num_gpus) if cfg.device == "cuda" else 0
    spec = record["spec"]
    placement = {
        "node_selector": dict(cfg.node_selector) if gpus else {},
        "tolerations": list(kube.GPU_TOLERATIONS) if gpus else [],
        "cpu_request": str(spec.get("cpu") or (8 * gpus or 2)),
        "memory_request": spec.get("memory") or (f"{48 * gpus}Gi" if gpus else "8Gi"),
        "memory_limit": spec.get("memory_limit") or (f"{96 * gpus}Gi" if gpus else "16Gi"),
        "shm_size": spec.get("shm") or ("32Gi" if gpus else "2Gi"),
        "backoff_limit": int(spec.get("backoff_limit", 3)),
        "active_deadline_seconds": int(timeout_of(spec)),
        "labels": {"vidtune.io/model": cfg.spec.name},
    }
    return kube.worker_job(record, image=image, namespace=namespace, gpus=gpus, command=command, **placement)


def kubernetes_launcher(image: str | None = None, namespace: str | None = None, api=None):
    """`launchers["kubernetes"]`: create the record's Job in the cluster."""
    image = image or os.environ.get("VIDTUNE_GPU_IMAGE", "ghcr.io/vidtune/vidtune:0.1.0-cu126")
    namespace = namespace or os.environ.get("VIDTUNE_NAMESPACE", "vidtune")

    def launch(record: dict) -> None:
        job = training_job(record, image, namespace)
        kube.submit(job, api)
        record.setdefault("labels", {})["kubernetes-job"] = job.metadata.name

    return launch


class KubeReconciler:
    """Polls the Jobs of QUEUED/RUNNING kubernetes-backend records and applies their status."""

    def __init__(self, store: JobStore, namespace: str | None = None, interval: float = 15.0, api=None):
        self.store, self.interval, self.api = store, interval, api
        self.namespace = namespace or os.environ.get("VIDTUNE_NAMESPACE", "vidtune")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="train-kube-reconciler", daemon=True)

    def reconcile_once(self) -> list[str]:
        changed = []
        for record in self.store.all():
            if record.get("backend") != "kubernetes" or record["state"] not in (QUEUED, RUNNING):
                continue
            name = record.get("labels", {}).get("kubernetes-job") or kube.k8s_name("vidtune", record["id"])
            status = kube.read_status(name, self.namespace, self.api)
            if kube.apply_status(record, status):
                self.store.save(record)
                changed.append(record["id"])
        return changed

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reconcile_once()
            except Exception as e:  # the cluster may be briefly unreachable; try again next round
                log.warning("kubernetes reconcile failed: %s", e)

    def start(self) -> "KubeReconciler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
