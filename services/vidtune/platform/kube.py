"""Kubernetes Jobs for vidtune work: a pure manifest builder, a thin submit/status, and the mapping of
a Job's status onto a vidtune job record.

Every heavy job (a LoRA run, GPU sample generation, a big transcode) runs the same container command,
`vidtune worker --service S --job-id ID`, which loads the job record from the object store and runs
it; only the placement differs (nodeSelector, tolerations, GPUs, memory). The builder returns typed
`V1Job` objects, so manifests are checked by the client's models before they reach a cluster, and
`manifest_yaml` prints what `kubectl apply -f -` accepts.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from kubernetes import client as k8s

from .jobs import FAILED, QUEUED, RUNNING, SUCCEEDED, TERMINAL, now_iso, transition

DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.product": "Tesla-V100-SXM2-32GB"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
LABEL_JOB_ID = "vidtune.io/job-id"
LABEL_KIND = "vidtune.io/kind"
LABEL_SERVICE = "vidtune.io/service"
S3_SECRET_DIR = "/var/run/secrets/vidtune/s3"
_LABEL_RE = re.compile(r"[^A-Za-z0-9._-]")


def k8s_name(*parts: str, limit: int = 63) -> str:
    """A DNS-1123 name (lowercase alphanumerics and '-', at most `limit` characters)."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return name[:limit].rstrip("-") or "vidtune"


def label_value(value: str) -> str:
    return _LABEL_RE.sub("-", str(value))[:63].strip("-._")


@dataclass
class JobSpec:
    """Where and how one worker pod runs. Defaults fit a GPU training pod on a V100 node."""

    name: str
    image: str
    command: list[str]
    namespace: str = "vidtune"
    labels: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    gpus: int = 0
    cpu_request: str = "2"
    memory_request: str = "8Gi"
    cpu_limit: str | None = None
    memory_limit: str | None = None
    node_selector: dict = field(default_factory=dict)
    tolerations: list = field(default_factory=list)
    shm_size: str = "16Gi"                  # PyTorch data loading and NCCL need a large /dev/shm
    scratch_size: str = "50Gi"
    backoff_limit: int = 3                  # a killed pod is retried; the worker resumes from saved state
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int = 86400
    s3_secret: str = "vidtune-s3"           # keys access-key / secret-key, mounted as files
    env_config_map: str | None = "vidtune-env"
    service_account: str | None = "vidtune-worker"
    image_pull_policy: str = "IfNotPresent"
    completions: int | None = None          # with parallelism + Indexed: sharded work (transcode)
    parallelism: int | None = None
    indexed: bool = False


def build_job(spec: JobSpec) -> k8s.V1Job:
    """A batch/v1 Job for a worker pod. Pure: no cluster is contacted."""
    labels = {"app.kubernetes.io/name": "vidtune", "app.kubernetes.io/component": "worker",
              **{k: label_value(v) for k, v in spec.labels.items()}}
    env = [k8s.V1EnvVar(name=k, value=str(v)) for k, v in sorted(spec.env.items())]
    env.append(k8s.V1EnvVar(name="VIDTUNE_S3_SECRET_DIR", value=S3_SECRET_DIR))
    env.append(k8s.V1EnvVar(name="VIDTUNE_POD_NAME", value_from=k8s.V1EnvVarSource(
        field_ref=k8s.V1ObjectFieldSelector(field_path="metadata.name"))))
    requests = {"cpu": spec.cpu_request, "memory": spec.memory_request}
    limits = {k: v for k, v in (("cpu", spec.cpu_limit), ("memory", spec.memory_limit)) if v}
    if spec.gpus:
        # Extended resources: the request must equal the limit.
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(spec.gpus)
    container = k8s.V1Container(
        name="worker", image=spec.image, image_pull_policy=spec.image_pull_policy,
        command=spec.command[:1], args=spec.command[1:], env=env,
        env_from=[k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=spec.env_config_map))]
        if spec.env_config_map else None,
        resources=k8s.V1ResourceRequirements(requests=requests, limits=limits or None),
        security_context=k8s.V1SecurityContext(allow_privilege_escalation=False, run_as_non_root=True,
                                               capabilities=k8s.V1Capabilities(drop=["ALL"])),
        volume_mounts=[
            k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
            k8s.V1VolumeMount(name="scratch", mount_path="/tmp"),
            k8s.V1VolumeMount(name="s3-credentials", mount_path=S3_SECRET_DIR, read_only=True),
        ])
    volumes = [
        k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=spec.shm_size)),
        k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=spec.scratch_size)),
        k8s.V1Volume(name="s3-credentials", secret=k8s.V1SecretVolumeSource(
            secret_name=spec.s3_secret, default_mode=0o440,
            items=[k8s.V1KeyToPath(key="access-key", path="access-key"),
                   k8s.V1KeyToPath(key="secret-key", path="secret-key")])),
    ]
    pod = k8s.V1PodSpec(
        restart_policy="Never", containers=[container], volumes=volumes,
        node_selector=dict(spec.node_selector) or None,
        tolerations=[k8s.V1Toleration(**t) for t in spec.tolerations] or None,
        service_account_name=spec.service_account, automount_service_account_token=False,
        security_context=k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=10001, run_as_group=10001,
                                                  fs_group=10001,
                                                  seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")))
    job_spec = k8s.V1JobSpec(
        template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod),
        backoff_limit=spec.backoff_limit, active_deadline_seconds=spec.active_deadline_seconds,
        ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
        completions=spec.completions, parallelism=spec.parallelism,
        completion_mode="Indexed" if spec.indexed else None)
    return k8s.V1Job(api_version="batch/v1", kind="Job",
                     metadata=k8s.V1ObjectMeta(name=k8s_name(spec.name), namespace=spec.namespace, labels=labels),
                     spec=job_spec)


def per_gpu(command: list[str], gpus: int) -> list[str]:
    """The command under torchrun with one process per GPU when a pod has more than one."""
    if gpus > 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "--no-python", *command]
    return list(command)


def worker_command(service: str, job_id: str, gpus: int = 0) -> list[str]:
    return per_gpu(["vidtune", "worker", "--service", service, "--job-id", job_id], gpus)


def worker_job(record: dict, image: str, namespace: str = "vidtune", gpus: int = 0,
               command: list[str] | None = None, **placement) -> k8s.V1Job:
    """The Job that runs one vidtune job record; labels link the two both ways.

    `command` replaces `vidtune worker` for a self-contained Job (one that needs no stored record).
    """
    service = record["kind"].split(".")[0]
    labels = {LABEL_JOB_ID: record["id"], LABEL_KIND: record["kind"], LABEL_SERVICE: service,
              **placement.pop("labels", {})}
    if gpus and "node_selector" not in placement:
        placement["node_selector"] = dict(DEFAULT_GPU_NODE_SELECTOR)
    if gpus and "tolerations" not in placement:
        placement["tolerations"] = list(GPU_TOLERATIONS)
    return build_job(JobSpec(name=k8s_name("vidtune", record["id"]), image=image, namespace=namespace,
                             command=per_gpu(command, gpus) if command else worker_command(service, record["id"], gpus),
                             labels=labels, gpus=gpus,
                             env={"VIDTUNE_JOB_ID": record["id"], "VIDTUNE_WORKER_SERVICE": service,
                                  **placement.pop("env", {})}, **placement))


def manifest(job: k8s.V1Job) -> dict:
    """The plain-dict manifest (camelCase keys, no nulls) of a typed object."""
    return k8s.ApiClient().sanitize_for_serialization(job)


def manifest_yaml(job: k8s.V1Job) -> str:
    import yaml

    return yaml.safe_dump(manifest(job), sort_keys=False)


# -- the thin cluster side -------------------------------------------------------------------------

def batch_api():
    """A BatchV1Api from the in-cluster service account, else the local kubeconfig."""
    from kubernetes import config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
    else:
        config.load_kube_config()
    return k8s.BatchV1Api()


def submit(job: k8s.V1Job, api=None) -> k8s.V1Job:
    api = api or batch_api()
    return api.create_namespaced_job(namespace=job.metadata.namespace, body=job)


def read_status(name: str, namespace: str, api=None) -> k8s.V1JobStatus | None:
    """The Job's status, or None when the Job no longer exists (deleted, or collected by its TTL)."""
    from kubernetes.client.exceptions import ApiException

    api = api or batch_api()
    try:
        return api.read_namespaced_job_status(name=name, namespace=namespace).status
    except ApiException as e:
        if e.status == 404:
            return None
        raise


# -- status -> record (pure) -------------------------------------------------------------------------

def job_phase(status: k8s.V1JobStatus | None) -> str:
    """QUEUED / RUNNING / SUCCEEDED / FAILED for a Job status; 'MISSING' when the Job is gone."""
    if status is None:
        return "MISSING"
    for cond in status.conditions or []:
        if cond.status == "True" and cond.type in ("Failed", "FailureTarget"):
            return FAILED
        if cond.status == "True" and cond.type in ("Complete", "SuccessCriteriaMet"):
            return SUCCEEDED
    if status.active or status.ready:
        return RUNNING
    return QUEUED


def failure_reason(status: k8s.V1JobStatus | None) -> str:
    if status is None:
        return "the Kubernetes Job no longer exists"
    for cond in status.conditions or []:
        if cond.status == "True" and cond.type in ("Failed", "FailureTarget"):
            return f"Kubernetes Job failed: {cond.reason or 'Failed'}: {cond.message or ''}".strip()
    return "Kubernetes Job failed"


def apply_status(record: dict, status: k8s.V1JobStatus | None) -> bool:
    """Flow a Job's status into a job record. Returns True when the record changed.

    The worker writes RUNNING/SUCCEEDED itself; Kubernetes is only the authority when the pod could
    not say so: the Job failed (backoff limit, deadline, eviction) or vanished while the record still
    says QUEUED/RUNNING. A FAILED record then carries the Kubernetes reason.
    """
    if record.get("state") in TERMINAL:
        return False
    phase = job_phase(status)
    info = {"phase": phase, "checked": now_iso()}
    if status is not None:
        info.update(active=status.active or 0, succeeded=status.succeeded or 0, failed=status.failed or 0)
    changed = record.get("kubernetes", {}).get("phase") != phase
    record.setdefault("kubernetes", {}).update(info)
    if phase in (FAILED, "MISSING") and record["state"] in (QUEUED, RUNNING):
        transition(record, FAILED)
        record["error"] = {"code": 14 if phase == "MISSING" else 13, "message": failure_reason(status)}
        record.setdefault("progress", {})["message"] = record["error"]["message"]
        return True
    return changed
