"""Where a service's heavy jobs run besides its own threads: a subprocess on this machine, or a
Kubernetes Job on a cluster node.

Both start the same `vidtune worker --service S --job-id ID`, which runs the stored record through the
service's handler; a launcher only places it. Each service says how its jobs are placed on a cluster
(`placement(record) -> JobSpec overrides`: GPUs, memory, deadline); everything else about the Job comes
from `kube.ClusterSettings` (the chart's VIDTUNE_K8S_* variables). A reconciler flows Kubernetes Job
status back into the records, so a pod that dies before it can write FAILED still ends as FAILED, with
the reason.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from . import kube
from .errors import Conflict, InvalidArgument
from .jobs import QUEUED, RUNNING, JobStore, lease_alive
from .settings import cache_dir

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 7 * 24 * 3600
INPROCESS = "inprocess"

Launcher = Callable[[dict], dict]
Placement = Callable[[dict], dict]


def kubernetes_enabled(env: dict | None = None) -> bool:
    """True when this process may create Jobs: inside a pod, or told so (VIDTUNE_KUBERNETES=1)."""
    env = os.environ if env is None else env
    return env.get("VIDTUNE_KUBERNETES", "") == "1" or bool(env.get("KUBERNETES_SERVICE_HOST"))


def choose_backend(requested: str, launchers: dict[str, Launcher]) -> str:
    """The backend a request asked for (empty: in-process), or InvalidArgument naming the ones available."""
    backend = requested or INPROCESS
    known = [INPROCESS, *sorted(launchers)]
    if backend not in known:
        extra = " (kubernetes needs VIDTUNE_KUBERNETES=1 or a pod)" if backend == "kubernetes" else ""
        raise InvalidArgument(f"backend {backend!r} is not available here{extra}; choose one of {', '.join(known)}")
    return backend


def timeout_of(spec: dict) -> float:
    """Seconds a job may take (spec `timeout_s`; 0 or absent: a week)."""
    return float(spec.get("timeout_s") or 0) or DEFAULT_TIMEOUT_S


def worker_argv(service: str, job_id: str) -> list[str]:
    exe = shutil.which("vidtune")
    base = [exe] if exe else [sys.executable, "-m", "vidtune.cli"]
    return [*base, "worker", "--service", service, "--job-id", job_id]


def local_launcher(service: str, log_dir: str | Path | None = None) -> Launcher:
    """`launchers["local"]`: run the record in a child process, killed after the spec's `timeout_s`.

    Its output goes to `<log_dir>/<job id>.log` (default: the cache directory's logs/).
    """
    log_dir = Path(log_dir or cache_dir() / "logs")

    def launch(record: dict) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_dir / f"{record['id']}.log", "ab")
        proc = subprocess.Popen(worker_argv(service, record["id"]), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=os.environ.copy())
        timeout = timeout_of(record["spec"])

        def reap() -> None:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.error("job %s exceeded %.0f s; killing pid %d", record["id"], timeout, proc.pid)
                proc.kill()
                proc.wait()
            finally:
                out.close()

        threading.Thread(target=reap, name=f"reap-{record['id']}", daemon=True).start()
        return {"pid": proc.pid}

    return launch


def kubernetes_launcher(service: str, placement: Placement, settings: kube.ClusterSettings | None = None,
                        api=None) -> Launcher:
    """`launchers["kubernetes"]`: create the record's worker Job, placed by `placement(record)`."""
    settings = settings or kube.ClusterSettings.from_env()

    def launch(record: dict) -> None:
        if record["service"] != service:
            raise InvalidArgument(f"job {record['id']} belongs to {record['service']}, not {service}")
        job = kube.worker_job(record, settings, **placement(record))
        kube.submit(job, api)
        return {"kubernetes-job": job.metadata.name}

    return launch


class KubeReconciler:
    """Polls the Jobs of QUEUED/RUNNING kubernetes-backend records and applies their status."""

    def __init__(self, store: JobStore, namespace: str | None = None, interval: float = 15.0, api=None):
        self.store, self.interval, self.api = store, interval, api
        self.namespace = namespace or kube.ClusterSettings.from_env().namespace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{store.service}-kube-reconciler", daemon=True)

    def reconcile_once(self) -> list[str]:
        """Observe every unfinished kubernetes-backend Job; returns the ids whose record was ended."""
        changed = []
        for record in self.store.all():
            if record.get("backend") != "kubernetes" or record["state"] not in (QUEUED, RUNNING):
                continue
            name = self.store.observed(record["id"]).get("kubernetes-job") or kube.k8s_name("vidtune", record["id"])
            status = kube.read_status(name, self.namespace, self.api)
            observed = kube.observe_status(status)
            self.store.observe(record["id"], **{"kubernetes-job": name, **observed})
            if observed["phase"] in kube.ENDED_BADLY and self._fail_abandoned(record["id"], status):
                changed.append(record["id"])
        return changed

    def _fail_abandoned(self, job_id: str, status) -> bool:
        """End the record as FAILED when its Job failed and no live runner holds it (compare-and-swap)."""
        record, version = self.store.load_versioned(job_id)
        if record["state"] not in (QUEUED, RUNNING) or lease_alive(record):
            return False  # a live pod still owns it; its lease expires if it is gone, and we look again
        kube.fail_from_status(record, status)
        try:
            self.store.replace(record, version)
        except Conflict:
            return False
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reconcile_once()
            except Exception as e:  # the cluster may be briefly unreachable; try again next round
                log.warning("kubernetes reconcile failed: %s", e)

    def start(self) -> KubeReconciler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()


def service_launchers(service: str, placement: Placement) -> dict[str, Launcher]:
    """The launchers a service offers: always "local", and "kubernetes" when `kubernetes_enabled()`."""
    launchers: dict[str, Launcher] = {"local": local_launcher(service)}
    if kubernetes_enabled():
        launchers["kubernetes"] = kubernetes_launcher(service, placement)
    return launchers


def start_reconciler(store: JobStore, launchers: dict[str, Launcher]) -> list[Callable[[], None]]:
    """Follow the service's Kubernetes Jobs when it can start them; returns the callbacks that stop it."""
    if "kubernetes" not in launchers:
        return []
    return [KubeReconciler(store).start().stop]
