"""The batch API calls vidtune makes, over Jobs kept in memory, with a node that really runs their pods.

`LocalCluster` stands in for the API server (create a Job, read its status) and for a kubelet: every pod of
a created Job runs its container's command as a local subprocess, with the environment the pod would get
(the container's `env`, its ConfigMap's `envFrom`, the downward API's pod name and completion index),
`$(VAR)` references in the command expanded by the kubelet's rule, and its volumes as local directories
(a Secret volume holds the Secret's files; an env value naming a mount path names that directory).
Indexed Jobs run `parallelism` pods at once, retry each index up to `backoffLimitPerIndex` times and end
Complete or Failed with `failedIndexes`, as the Job controller does. What is not here: scheduling,
nodeSelector/tolerations/resources (checked by schema validation instead), images (the pods run this
checkout), networking.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(text: str, env: dict) -> str:
    """Kubernetes' rule for `$(VAR)` in command/args: defined variables expand, `$$` escapes, others stay."""
    return _REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


@dataclass
class Pod:
    job: str
    index: int
    attempt: int
    command: list[str]
    env: dict
    log: Path
    exit_code: int | None = None
    killed: bool = False


class InMemoryBatchApi:
    """The two BatchV1Api calls vidtune makes, over a dict of Jobs (nothing runs them)."""

    def __init__(self):
        self.jobs: dict[tuple[str, str], k8s.V1Job] = {}

    def create_namespaced_job(self, namespace, body):
        key = (namespace, body.metadata.name)
        if key in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        body.status = k8s.V1JobStatus()
        self.jobs[key] = body
        return body

    def read_namespaced_job_status(self, name, namespace):
        if (namespace, name) not in self.jobs:
            raise ApiException(status=404, reason="NotFound")
        return self.jobs[(namespace, name)]


@dataclass
class LocalCluster(InMemoryBatchApi):
    root: Path
    config_maps: dict[str, dict] = field(default_factory=dict)
    secrets: dict[str, dict] = field(default_factory=dict)
    # (job, index, attempt) -> a condition; once true the pod is killed (SIGKILL), as a lost node would.
    kill_when: Callable[[k8s.V1Job, int, int], Callable[[], bool] | None] = lambda job, index, attempt: None
    jobs: dict = field(default_factory=dict)
    pods: list[Pod] = field(default_factory=list)
    _threads: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create_namespaced_job(self, namespace, body):
        super().create_namespaced_job(namespace, body)
        t = threading.Thread(target=self._run_job, args=(body,), daemon=True)
        self._threads.append(t)
        t.start()
        return body

    def wait_idle(self, timeout: float = 120) -> None:
        for t in self._threads:
            t.join(timeout)

    # -- the Job controller
    def _run_job(self, job: k8s.V1Job) -> None:
        spec = job.spec
        indexed = spec.completion_mode == "Indexed"
        completions = spec.completions or 1
        per_index = spec.backoff_limit_per_index if indexed else None
        limit = spec.backoff_limit if spec.backoff_limit is not None else 6
        state = {"active": 0, "succeeded": set(), "failed_indexes": set(), "failures": 0}

        def publish(conditions=None) -> None:
            ranges = ",".join(str(i) for i in sorted(state["failed_indexes"]))
            job.status = k8s.V1JobStatus(
                active=state["active"] or None, succeeded=len(state["succeeded"]) or None,
                failed=state["failures"] or None,
                completed_indexes=",".join(str(i) for i in sorted(state["succeeded"])) or None if indexed else None,
                failed_indexes=ranges or None if per_index is not None else None, conditions=conditions)

        def run_index(index: int) -> None:
            attempt = 0
            while True:
                with self._lock:
                    if state["failures"] > limit:
                        return
                    state["active"] += 1
                    publish()
                code = self._run_pod(job, index if indexed else None, attempt)
                with self._lock:
                    state["active"] -= 1
                    if code == 0:
                        state["succeeded"].add(index)
                        publish()
                        return
                    state["failures"] += 1
                    if per_index is not None and attempt >= per_index:
                        state["failed_indexes"].add(index)
                        publish()
                        return
                    publish()
                attempt += 1

        with ThreadPoolExecutor(max(1, spec.parallelism or 1)) as pool:
            list(pool.map(run_index, range(completions)))
        with self._lock:
            if len(state["succeeded"]) == completions:
                publish([k8s.V1JobCondition(type="Complete", status="True")])
            else:
                reason = "FailedIndexes" if state["failed_indexes"] else "BackoffLimitExceeded"
                publish([k8s.V1JobCondition(type="Failed", status="True", reason=reason,
                                            message=f"Job has failed indexes" if state["failed_indexes"]
                                            else "Job has reached the specified backoff limit")])

    # -- the kubelet
    def _run_pod(self, job: k8s.V1Job, index: int | None, attempt: int) -> int:
        name = f"{job.metadata.name}-{index if index is not None else 0}-{attempt}"
        pod_dir = self.root / name
        pod_dir.mkdir(parents=True)
        pod_spec = job.spec.template.spec
        container = pod_spec.containers[0]
        mounts = self._volumes(pod_spec, container, pod_dir)
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(pod_dir),
               "LANG": "C.UTF-8", "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
               "TMPDIR": mounts.get("/tmp", str(pod_dir))}
        node_env = set(env)
        for src in container.env_from or []:
            env.update(self.config_maps[src.config_map_ref.name])
        for var in container.env or []:
            if var.value_from is not None:
                path = var.value_from.field_ref.field_path
                value = name if path == "metadata.name" else str(index) if path == INDEX_ANNOTATION else None
                assert value is not None, f"{var.name}: field {path} is not one this node serves"
            else:
                value = expand(var.value or "", env)
            env[var.name] = value
        if index is not None:
            env.setdefault("JOB_COMPLETION_INDEX", str(index))  # the Job controller adds it too
        for key, value in list(env.items()):  # the pod sees its volumes at their mount paths
            if key in node_env:
                continue  # this node's own paths (its PATH may well lie below /tmp)
            for mount, local in mounts.items():
                if value == mount or value.startswith(mount + "/"):
                    env[key] = local + value[len(mount):]
        command = [expand(a, env) for a in (container.command or []) + (container.args or [])]
        command[0] = shutil.which(command[0], path=env["PATH"]) or command[0]
        pod = Pod(job.metadata.name, index or 0, attempt, command, env, pod_dir / "log.txt")
        with self._lock:
            self.pods.append(pod)
        kill = self.kill_when(job, index or 0, attempt)
        with pod.log.open("wb") as log:
            try:
                proc = subprocess.Popen(command, env=env, cwd=pod_dir, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except OSError as e:  # as a container whose command cannot start: the pod fails, the Job goes on
                log.write(f"{e}\n".encode())
                pod.exit_code = 127
                return 127
            while proc.poll() is None:
                if kill is not None and kill():
                    os.killpg(proc.pid, signal.SIGKILL)
                    pod.killed = True
                    proc.wait()
                    break
                time.sleep(0.1)
        pod.exit_code = proc.returncode
        return proc.returncode

    def _volumes(self, pod_spec, container, pod_dir: Path) -> dict[str, str]:
        """mount path -> local directory, a Secret volume's items written as files."""
        volumes = {v.name: v for v in pod_spec.volumes or []}
        out = {}
        for m in container.volume_mounts or []:
            local = pod_dir / "volumes" / m.name
            local.mkdir(parents=True, exist_ok=True)
            secret = volumes[m.name].secret
            if secret is not None:
                data = self.secrets[secret.secret_name]
                for item in secret.items or [k8s.V1KeyToPath(key=k, path=k) for k in data]:
                    (local / item.path).write_text(data[item.key])
            out[m.mount_path] = str(local)
        return out

    def log_of(self, pod: Pod) -> str:
        return pod.log.read_text(errors="replace")
