"""Kubernetes Jobs for vidtune work: a pure manifest builder, a thin submit/status, and the mapping of
a Job's status onto a vidtune job record.

Every heavy job (a LoRA run, GPU sample generation, a big transcode) runs the same container command,
`vidtune worker --service S --job-id ID`, which loads the job record from the object store and runs
it; only the placement differs (nodeSelector, tolerations, GPUs, memory). The builder returns typed
`V1Job` objects, so manifests are checked by the client's models before they reach a cluster, and
`manifest_yaml` prints what `kubectl apply -f -` accepts.

This builder is the only source of worker Jobs: the services build them with `ClusterSettings.from_env()`
(the VIDTUNE_K8S_* variables the Helm chart sets), and k8s/generate.py builds the kubectl templates with
the same code, so a Job started by a service and one applied by hand look alike.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal

from kubernetes import client as k8s

from .errors import InvalidArgument
from .jobs import FAILED, HANDED_BACK_EXIT_CODE, QUEUED, RUNNING, SUCCEEDED, grpc_code, now_iso, transition

DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.product": "Tesla-V100-SXM2-32GB"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
LABEL_JOB_ID = "vidtune.io/job-id"
LABEL_KIND = "vidtune.io/kind"
LABEL_SERVICE = "vidtune.io/service"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
S3_SECRET_DIR = "/var/run/secrets/vidtune/s3"
CACHE_DIR = "/var/cache/vidtune"
DEFAULT_IMAGE = "ghcr.io/vidtune/vidtune:0.1.0-cu126"
_LABEL_RE = re.compile(r"[^A-Za-z0-9._-]")


def k8s_name(*parts: str, limit: int = 63) -> str:
    """A DNS-1123 name (lowercase alphanumerics and '-', at most `limit` characters)."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return name[:limit].rstrip("-") or "vidtune"


def _snake(name: str) -> str:
    """tolerationSeconds -> toleration_seconds: manifest keys as the client's model arguments."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


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
    cpu_request: str | None = "2"
    memory_request: str | None = "8Gi"
    cpu_limit: str | None = None
    memory_limit: str | None = None
    node_selector: dict = field(default_factory=dict)
    tolerations: list = field(default_factory=list)
    shm_size: str = "16Gi"                  # PyTorch data loading and NCCL need a large /dev/shm
    scratch_size: str = "50Gi"
    backoff_limit: int = 3                  # a killed pod is retried; the worker resumes from saved state
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int = 86400
    s3_secret: str = "vidtune-s3"           # mounted as the files access-key / secret-key
    s3_secret_keys: dict = field(default_factory=lambda: {"access-key": "access-key", "secret-key": "secret-key"})
    env_config_map: str | None = "vidtune-env"
    service_account: str | None = "vidtune-worker"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list = field(default_factory=list)   # names of docker-registry Secrets
    priority_class_name: str | None = None
    queue_name: str | None = None           # Kueue LocalQueue; the Job is created suspended for Kueue to admit
    cache_size: str = "20Gi"                # $VIDTUNE_CACHE_DIR (model downloads, torch/triton caches)
    completions: int | None = None          # with parallelism + Indexed: sharded work (transcode)
    parallelism: int | None = None
    indexed: bool = False
    backoff_limit_per_index: int | None = None  # Indexed: retries of each index on its own (Kubernetes 1.29+)


def build_job(spec: JobSpec) -> k8s.V1Job:
    """A batch/v1 Job for a worker pod. Pure: no cluster is contacted."""
    labels = {"app.kubernetes.io/name": "vidtune", "app.kubernetes.io/component": "worker",
              **{k: label_value(v) for k, v in spec.labels.items()}}
    # Kueue reads its queue from the Job's own labels; the pods do not need it.
    job_labels = {**labels, LABEL_KUEUE_QUEUE: spec.queue_name} if spec.queue_name else labels
    env = [k8s.V1EnvVar(name=k, value=str(v)) for k, v in sorted(spec.env.items())]
    env.append(k8s.V1EnvVar(name="VIDTUNE_S3_SECRET_DIR", value=S3_SECRET_DIR))
    env.append(k8s.V1EnvVar(name="VIDTUNE_POD_NAME", value_from=k8s.V1EnvVarSource(
        field_ref=k8s.V1ObjectFieldSelector(field_path="metadata.name"))))
    if spec.indexed:
        env.append(completion_index_env())
    requests = {k: v for k, v in (("cpu", spec.cpu_request), ("memory", spec.memory_request)) if v}
    limits = {k: v for k, v in (("cpu", spec.cpu_limit), ("memory", spec.memory_limit)) if v}
    if spec.gpus:
        # Extended resources: the request must equal the limit.
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(spec.gpus)
    container = k8s.V1Container(
        name="worker", image=spec.image, image_pull_policy=spec.image_pull_policy,
        command=spec.command[:1], args=spec.command[1:], env=env,
        env_from=[k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=spec.env_config_map))]
        if spec.env_config_map else None,
        resources=k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None),
        # The image writes only to /tmp, the cache and /dev/shm, all volumes: the root filesystem stays read-only.
        security_context=k8s.V1SecurityContext(allow_privilege_escalation=False, run_as_non_root=True,
                                               read_only_root_filesystem=True,
                                               capabilities=k8s.V1Capabilities(drop=["ALL"])),
        volume_mounts=[
            k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
            k8s.V1VolumeMount(name="scratch", mount_path="/tmp"),
            k8s.V1VolumeMount(name="cache", mount_path=CACHE_DIR),
            k8s.V1VolumeMount(name="s3-credentials", mount_path=S3_SECRET_DIR, read_only=True),
        ])
    volumes = [
        k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=spec.shm_size)),
        k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=spec.scratch_size)),
        k8s.V1Volume(name="cache", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=spec.cache_size)),
        k8s.V1Volume(name="s3-credentials", secret=k8s.V1SecretVolumeSource(
            secret_name=spec.s3_secret, default_mode=0o440,
            items=[k8s.V1KeyToPath(key=spec.s3_secret_keys.get(f, f), path=f) for f in ("access-key", "secret-key")])),
    ]
    pod = k8s.V1PodSpec(
        restart_policy="Never", containers=[container], volumes=volumes,
        node_selector=dict(spec.node_selector) or None,
        tolerations=[k8s.V1Toleration(**{_snake(k): v for k, v in t.items()}) for t in spec.tolerations] or None,
        service_account_name=spec.service_account, automount_service_account_token=False,
        priority_class_name=spec.priority_class_name or None,
        image_pull_secrets=[k8s.V1LocalObjectReference(name=n) for n in spec.image_pull_secrets] or None,
        security_context=k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=10001, run_as_group=10001,
                                                  fs_group=10001,
                                                  seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")))
    job_spec = k8s.V1JobSpec(
        template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod),
        backoff_limit=spec.backoff_limit, active_deadline_seconds=spec.active_deadline_seconds,
        ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
        completions=spec.completions, parallelism=spec.parallelism,
        completion_mode="Indexed" if spec.indexed else None, suspend=True if spec.queue_name else None,
        backoff_limit_per_index=spec.backoff_limit_per_index, pod_failure_policy=handed_back_is_no_failure())
    return k8s.V1Job(api_version="batch/v1", kind="Job",
                     metadata=k8s.V1ObjectMeta(name=k8s_name(spec.name), namespace=spec.namespace or None,
                                               labels=job_labels),
                     spec=job_spec)


def handed_back_is_no_failure() -> k8s.V1PodFailurePolicy:
    """A pod that handed its job back (a drain: exit HANDED_BACK_EXIT_CODE) or was evicted or preempted
    (the DisruptionTarget condition) does not use up the Job's retries: a node drain is not a failure."""
    return k8s.V1PodFailurePolicy(rules=[
        # onPodConditions: [] is required by the 1.28-1.30 schemas beside onExitCodes
        k8s.V1PodFailurePolicyRule(action="Ignore", on_pod_conditions=[],
                                   on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(
                                       container_name="worker", operator="In", values=[HANDED_BACK_EXIT_CODE])),
        k8s.V1PodFailurePolicyRule(action="Ignore", on_pod_conditions=[
            k8s.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")]),
    ])


def per_gpu(command: list[str], gpus: int) -> list[str]:
    """The command under torchrun with one process per GPU when a pod has more than one."""
    if gpus > 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={gpus}", "--no-python", *command]
    return list(command)


def worker_command(service: str, job_id: str, gpus: int = 0) -> list[str]:
    return per_gpu(["vidtune", "worker", "--service", service, "--job-id", job_id], gpus)


def worker_job(record: dict, settings: ClusterSettings | None = None, *, gpus: int | None = None,
               command: list[str] | None = None, **overrides) -> k8s.V1Job:
    """The Job that runs one vidtune job record; labels link the two both ways.

    `settings` says where workers run in this cluster (default: `ClusterSettings.from_env()`), `gpus`
    how many GPUs this job needs (default: the cluster's), and `overrides` any other JobSpec field
    for this job. `command` replaces `vidtune worker` for a self-contained Job (one that needs no
    stored record).
    """
    settings = settings if settings is not None else ClusterSettings.from_env()
    gpus = settings.gpus if gpus is None else int(gpus)
    service = record["kind"].split(".")[0]
    fields = settings.job_fields(gpus)
    labels = {**fields.pop("labels"), LABEL_JOB_ID: record["id"], LABEL_KIND: record["kind"],
              LABEL_SERVICE: service, **overrides.pop("labels", {})}
    env = {"VIDTUNE_JOB_ID": record["id"], "VIDTUNE_WORKER_SERVICE": service, **overrides.pop("env", {})}
    fields.update(overrides)
    return build_job(JobSpec(name=fields.pop("name", None) or k8s_name("vidtune", record["id"]),
                             command=per_gpu(command, gpus) if command else worker_command(service, record["id"], gpus),
                             labels=labels, env=env, gpus=gpus, **fields))


# -- Indexed Jobs: one pod per shard of a job's items ---------------------------------------------------

COMPLETION_INDEX = "JOB_COMPLETION_INDEX"


def completion_index_env() -> k8s.V1EnvVar:
    """The pod's index, declared in the container's own env (the Job controller adds the same variable), so
    `$(JOB_COMPLETION_INDEX)` in the command is expanded by the kubelet by the documented rule."""
    return k8s.V1EnvVar(name=COMPLETION_INDEX, value_from=k8s.V1EnvVarSource(field_ref=k8s.V1ObjectFieldSelector(
        field_path="metadata.annotations['batch.kubernetes.io/job-completion-index']")))


def indexed_worker_job(record: dict, settings: ClusterSettings, shards: int, command: list[str], *, gpus: int = 0,
                       labels: dict | None = None) -> k8s.V1Job:
    """An Indexed Job of `shards` pods, all at once, each running `command` (which names its shard through
    `$(JOB_COMPLETION_INDEX)`). Each index is retried on its own (backoffLimitPerIndex); the Job's
    backoffLimit caps the retries of all indexes together where the per-index limit is not supported."""
    return worker_job(record, settings, gpus=gpus, command=command, labels=labels or {},
                      name=k8s_name("vidtune", record["id"], "shards"), indexed=True, completions=shards,
                      parallelism=shards, backoff_limit_per_index=settings.backoff_limit,
                      backoff_limit=settings.backoff_limit * shards)


def failed_indexes(status: k8s.V1JobStatus | None) -> list[int]:
    """The indexes the Job gave up on (`status.failedIndexes`, e.g. "1,3-5"), with backoffLimitPerIndex."""
    out: list[int] = []
    for part in filter(None, ((status.failed_indexes if status else None) or "").split(",")):
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


# -- where workers run: the chart's VIDTUNE_K8S_* settings ------------------------------------------

def scale_quantity(quantity: str | int, factor: float, cpu: bool = False) -> str:
    """A resource quantity times `factor`, written as Kubernetes would (48Gi * 0.5 -> 24Gi, 8 * 0.5 -> 4)."""
    from kubernetes.utils.quantity import parse_quantity

    value = parse_quantity(quantity) * Decimal(str(factor))
    if cpu:
        milli = int(value * 1000)
        return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"
    whole = int(value)
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if whole and whole % unit == 0:
            return f"{whole // unit}{suffix}"
    return str(whole)


def _env_json(env: dict, name: str, kind: type, default):
    text = env.get(name, "")
    if not text.strip():
        return default
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"{name}: not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, kind):
        raise InvalidArgument(f"{name}: expected a JSON {kind.__name__}, got {text!r}")
    return value


def _env_int(env: dict, name: str, default: int | None) -> int | None:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{name}: expected a whole number, got {text!r}") from None


@dataclass
class ClusterSettings:
    """Where and how this cluster runs worker Jobs; one instance describes every Job a service starts.

    The Helm chart sets these as VIDTUNE_K8S_* variables on the train and evaluate services (see
    docs/cluster.md); without them the defaults fit a release named "vidtune" on V100 nodes.
    `resources` is the chart's container resources for a worker with `gpus` GPUs: a job that needs
    another number of GPUs gets them scaled per GPU. CPU-only jobs get `cpu_resources`.
    """

    namespace: str = "vidtune"
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list = field(default_factory=list)
    service_account: str | None = "vidtune-worker"
    node_selector: dict = field(default_factory=lambda: dict(DEFAULT_GPU_NODE_SELECTOR))
    tolerations: list = field(default_factory=lambda: [dict(t) for t in GPU_TOLERATIONS])
    gpus: int = 1
    resources: dict = field(default_factory=lambda: {"requests": {"cpu": "8", "memory": "48Gi"},
                                                     "limits": {"cpu": "16", "memory": "96Gi"}})
    cpu_resources: dict = field(default_factory=lambda: {"requests": {"cpu": "2", "memory": "8Gi"},
                                                         "limits": {"cpu": "8", "memory": "16Gi"}})
    shm_size: str = "16Gi"
    s3_secret: str = "vidtune-s3"
    s3_secret_keys: dict = field(default_factory=lambda: {"access-key": "access-key", "secret-key": "secret-key"})
    config_map: str | None = "vidtune-env"
    priority_class: str | None = None
    queue_name: str | None = None
    ttl_seconds_after_finished: int = 86400
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    # Labels every worker pod carries: the release's selector labels let NetworkPolicies admit it to MinIO.
    labels: dict = field(default_factory=lambda: {"app.kubernetes.io/instance": "vidtune",
                                                  "app.kubernetes.io/part-of": "vidtune"})

    @classmethod
    def from_env(cls, env: dict | None = None) -> ClusterSettings:
        """Settings from VIDTUNE_K8S_* (names and JSON formats as the chart writes them); unset: the default."""
        env = os.environ if env is None else env
        d = cls()

        def text(name: str, default):
            value = env.get(name, "").strip()
            return value or default

        pull_secrets = _env_json(env, "VIDTUNE_K8S_IMAGE_PULL_SECRETS", list, d.image_pull_secrets)
        return cls(
            namespace=text("VIDTUNE_K8S_NAMESPACE", d.namespace),
            image=text("VIDTUNE_K8S_IMAGE", d.image),
            image_pull_policy=text("VIDTUNE_K8S_IMAGE_PULL_POLICY", d.image_pull_policy),
            image_pull_secrets=[p["name"] if isinstance(p, dict) else str(p) for p in pull_secrets],
            service_account=text("VIDTUNE_K8S_SERVICE_ACCOUNT", d.service_account),
            node_selector=_env_json(env, "VIDTUNE_K8S_NODE_SELECTOR", dict, d.node_selector),
            tolerations=_env_json(env, "VIDTUNE_K8S_TOLERATIONS", list, d.tolerations),
            gpus=_env_int(env, "VIDTUNE_K8S_GPUS", d.gpus),
            resources=_env_json(env, "VIDTUNE_K8S_RESOURCES", dict, d.resources),
            shm_size=text("VIDTUNE_K8S_SHM_SIZE", d.shm_size),
            s3_secret=text("VIDTUNE_K8S_S3_SECRET", d.s3_secret),
            s3_secret_keys={**d.s3_secret_keys, **_env_json(env, "VIDTUNE_K8S_S3_KEY_NAMES", dict, {})},
            config_map=text("VIDTUNE_K8S_CONFIGMAP", d.config_map),
            priority_class=text("VIDTUNE_K8S_PRIORITY_CLASS", None),
            queue_name=text("VIDTUNE_K8S_QUEUE_NAME", None),
            ttl_seconds_after_finished=_env_int(env, "VIDTUNE_K8S_TTL_SECONDS", d.ttl_seconds_after_finished),
            backoff_limit=_env_int(env, "VIDTUNE_K8S_BACKOFF_LIMIT", d.backoff_limit),
            active_deadline_seconds=_env_int(env, "VIDTUNE_K8S_ACTIVE_DEADLINE_SECONDS", None),
            labels=_env_json(env, "VIDTUNE_K8S_LABELS", dict, d.labels))

    def replace(self, **changes) -> ClusterSettings:
        """A copy with the given fields changed; None leaves a field as it is (an option not given)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def container_resources(self, gpus: int) -> dict:
        """cpu/memory requests and limits for a worker with `gpus` GPUs (JobSpec field names)."""
        if gpus <= 0:
            res, factor = self.cpu_resources, 1.0
        else:
            res, factor = self.resources, gpus / max(1, self.gpus)
        names = {("requests", "cpu"): "cpu_request", ("requests", "memory"): "memory_request",
                 ("limits", "cpu"): "cpu_limit", ("limits", "memory"): "memory_limit"}
        out = {}
        for (part, key), name in names.items():
            value = (res.get(part) or {}).get(key)
            if value not in (None, ""):
                out[name] = scale_quantity(value, factor, cpu=key == "cpu")
        return out

    def job_fields(self, gpus: int) -> dict:
        """JobSpec fields (all but name, command, env) of a worker with `gpus` GPUs in this cluster."""
        fields = {
            "namespace": self.namespace, "image": self.image, "image_pull_policy": self.image_pull_policy,
            "image_pull_secrets": list(self.image_pull_secrets), "service_account": self.service_account,
            "s3_secret": self.s3_secret, "s3_secret_keys": dict(self.s3_secret_keys), "env_config_map": self.config_map,
            "priority_class_name": self.priority_class, "queue_name": self.queue_name,
            "ttl_seconds_after_finished": self.ttl_seconds_after_finished, "backoff_limit": self.backoff_limit,
            "active_deadline_seconds": self.active_deadline_seconds, "labels": dict(self.labels),
            # GPU nodes are tainted and labelled; CPU work goes wherever the scheduler likes.
            "node_selector": dict(self.node_selector) if gpus else {},
            "tolerations": [dict(t) for t in self.tolerations] if gpus else [],
            "shm_size": self.shm_size if gpus else "2Gi",
            "cpu_request": None, "memory_request": None, "cpu_limit": None, "memory_limit": None,
        }
        fields.update(self.container_resources(gpus))
        return fields


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


ENDED_BADLY = (FAILED, "MISSING")


def observe_status(status: k8s.V1JobStatus | None) -> dict:
    """What the reconciler records beside a job's record about its Kubernetes Job."""
    info = {"phase": job_phase(status), "checked": now_iso()}
    if status is not None:
        info.update(active=status.active or 0, succeeded=status.succeeded or 0, failed=status.failed or 0)
    return info


def fail_from_status(record: dict, status: k8s.V1JobStatus | None) -> dict:
    """End an abandoned record as FAILED with the Kubernetes reason (UNAVAILABLE when the Job vanished)."""
    phase = job_phase(status)
    if record["state"] == RUNNING:
        transition(record, QUEUED)
    transition(record, FAILED)
    record["lease"] = None
    record["error"] = {"code": grpc_code("UNAVAILABLE" if phase == "MISSING" else "INTERNAL"),
                       "message": failure_reason(status)}
    record.setdefault("progress", {})["message"] = record["error"]["message"]
    return record


# -- multi-node training: a Kubeflow Trainer v2 TrainJob ---------------------------------------------

TRAINJOB_API = "trainer.kubeflow.org/v1alpha1"
TRAINJOB_RUNTIME = "torch-distributed"       # the ClusterTrainingRuntime Kubeflow Trainer ships
TRAINJOB_NODE = "node"                       # the runtime's replicated job and container name
# The chart's ConfigMap keys: a TrainJob's container patch takes env, not envFrom.
ENV_CONFIG_KEYS = ("VIDTUNE_S3_ENDPOINT", "VIDTUNE_S3_REGION", "VIDTUNE_BUCKET", "VIDTUNE_JOBS_ROOT",
                   "VIDTUNE_S3_BUCKETS", "VIDTUNE_S3_PREFIX", "VIDTUNE_CREATE_BUCKETS", "VIDTUNE_LOG_FORMAT", "VIDTUNE_CACHE_DIR")


def build_trainjob(job: k8s.V1Job, command: list[str], nodes: int, gpus: int, runtime: str = TRAINJOB_RUNTIME) -> dict:
    """A TrainJob running `command` on `nodes` pods of `gpus` GPUs each, from a worker Job's pod. Pure.

    The pod `build_job` made is mapped onto the TrainJob's fields: image, command, env and resources on
    `trainer`, the rest (volumes, placement, security) as a runtime patch of the runtime's `node` pods.
    The runtime's torch plugin adds PET_NNODES/PET_NPROC_PER_NODE/PET_NODE_RANK/PET_MASTER_* to each.
    """
    job = manifest(job)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container.update(command=command[:1], args=command[1:])
    env = list(container.get("env", []))
    for ref in container.get("envFrom", []):
        name = ref["configMapRef"]["name"]
        env += [{"name": key, "valueFrom": {"configMapKeyRef": {"name": name, "key": key, "optional": True}}}
                for key in ENV_CONFIG_KEYS]
    trainer = {"image": container["image"], "command": container["command"], "args": container.get("args", []),
               "env": env, "numNodes": int(nodes), "numProcPerNode": max(1, int(gpus))}
    if container.get("resources"):
        trainer["resourcesPerNode"] = container["resources"]
    pod_patch = {k: pod[k] for k in ("serviceAccountName", "volumes", "imagePullSecrets", "securityContext",
                                     "nodeSelector", "tolerations") if pod.get(k)}
    pod_patch["containers"] = [{"name": TRAINJOB_NODE, "volumeMounts": container["volumeMounts"],
                                "securityContext": container["securityContext"]}]
    meta = job["metadata"]
    body = {
        "runtimeRef": {"name": runtime, "apiGroup": TRAINJOB_API.split("/")[0], "kind": "ClusterTrainingRuntime"},
        "trainer": trainer,
        "runtimePatches": [{"manager": "vidtune.io/train", "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": TRAINJOB_NODE, "template": {"spec": {"template": {
                "metadata": {"labels": job["spec"]["template"]["metadata"]["labels"]}, "spec": pod_patch}}}}]}}}}],
    }
    if job["spec"].get("activeDeadlineSeconds"):
        body["activeDeadlineSeconds"] = int(job["spec"]["activeDeadlineSeconds"])
    if job["spec"].get("suspend"):  # Kueue admits it, as it does the Job
        body["suspend"] = True
    return {"apiVersion": TRAINJOB_API, "kind": "TrainJob", "metadata": meta, "spec": body}
