"""Kubernetes Job manifests (validated offline against the official schemas) and status -> record."""
from __future__ import annotations

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes_validate import validate

from vidtune.platform import kube
from vidtune.platform.errors import InvalidArgument
from vidtune.platform.jobs import FAILED, QUEUED, RUNNING, SUCCEEDED, new_record, transition

VERSIONS = ["1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]


def _record(kind="train.run", state=QUEUED):
    rec = new_record(kind.split(".")[0], kind, {"preset": "v100-2gpu-ti2v-5b-480x832x49"}, backend="kubernetes")
    if state != QUEUED:
        transition(rec, state)
    return rec


SETTINGS = kube.ClusterSettings()  # the defaults: a release "vidtune" on V100 nodes


def gpu_job(gpus=2):
    return kube.worker_job(_record(), SETTINGS, gpus=gpus, active_deadline_seconds=86400)


@pytest.mark.parametrize("version", VERSIONS)
def test_gpu_worker_job_is_valid_for_every_supported_version(version):
    validate(kube.manifest(gpu_job()), version, strict=True)


def test_gpu_job_placement_and_links():
    rec = _record()
    job = kube.worker_job(rec, SETTINGS.replace(image="img:1"), gpus=2, active_deadline_seconds=3600)
    m = kube.manifest(job)
    pod = m["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert m["apiVersion"] == "batch/v1" and m["kind"] == "Job"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-V100-SXM2-32GB"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" == c["resources"]["requests"]["nvidia.com/gpu"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    secret = next(v for v in pod["volumes"] if v["name"] == "s3-credentials")
    assert secret["secret"]["secretName"] == "vidtune-s3"
    assert {"name": "VIDTUNE_S3_SECRET_DIR", "value": kube.S3_SECRET_DIR} in c["env"]
    # the credentials are mounted files, never values in the manifest
    assert not [e for e in c["env"] if "KEY" in e["name"] and "value" in e]
    mounts = {mt["mountPath"]: mt for mt in c["volumeMounts"]}
    assert mounts[kube.S3_SECRET_DIR]["readOnly"] is True and "/var/cache/vidtune" in mounts and "/tmp" in mounts
    sc, pod_sc = c["securityContext"], pod["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True and sc["capabilities"]["drop"] == ["ALL"] and pod_sc["runAsUser"] > 0
    assert pod["serviceAccountName"] == "vidtune-worker" and pod["automountServiceAccountToken"] is False
    # the chart's per-worker resources (one GPU by default) scale with the GPUs this job takes
    assert c["resources"]["requests"]["memory"] == "96Gi" and c["resources"]["limits"]["cpu"] == "32"
    assert m["spec"]["backoffLimit"] == 3 and m["spec"]["activeDeadlineSeconds"] == 3600
    # a drained worker (exit 75) or an evicted pod does not use up a retry; a failure or a hang (124) does
    rules = m["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "Ignore"
    assert rules[0]["onExitCodes"] == {"containerName": "worker", "operator": "In", "values": [75]}
    assert rules[1]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    assert "suspend" not in m["spec"] and "priorityClassName" not in pod
    assert m["spec"]["ttlSecondsAfterFinished"] == 86400
    assert m["metadata"]["labels"][kube.LABEL_JOB_ID] == rec["id"]
    assert m["spec"]["template"]["metadata"]["labels"][kube.LABEL_KIND] == "train.run"
    # two GPUs: one worker process per GPU through torchrun, running the same worker command
    assert [c["command"][0], *c["args"]][:3] == ["torchrun", "--standalone", "--nproc_per_node=2"]
    assert c["args"][-5:] == ["worker", "--service", "train", "--job-id", rec["id"]]


def test_cpu_job_has_no_gpu_placement_and_an_indexed_variant_validates():
    rec = _record("transcode.batch")
    job = kube.worker_job(rec, SETTINGS, gpus=0, completions=4, parallelism=2, indexed=True)
    m = kube.manifest(job)
    pod = m["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["requests"]
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
    assert m["spec"]["completionMode"] == "Indexed"
    validate(m, "1.33.0", strict=True)


CHART_ENV = {
    "VIDTUNE_K8S_NAMESPACE": "team-a",
    "VIDTUNE_K8S_IMAGE": "registry.local/vidtune:1-cu126",
    "VIDTUNE_K8S_IMAGE_PULL_POLICY": "Always",
    "VIDTUNE_K8S_IMAGE_PULL_SECRETS": '[{"name": "regcred"}]',
    "VIDTUNE_K8S_SERVICE_ACCOUNT": "rel-worker",
    "VIDTUNE_K8S_NODE_SELECTOR": '{"nvidia.com/gpu.product": "Tesla-V100-PCIE-32GB"}',
    "VIDTUNE_K8S_TOLERATIONS": '[{"key": "gpu", "operator": "Equal", "value": "v100", "effect": "NoSchedule",'
                               ' "tolerationSeconds": 30}]',
    "VIDTUNE_K8S_GPUS": "8",
    "VIDTUNE_K8S_RESOURCES": '{"limits": {"cpu": "64", "memory": "480Gi", "nvidia.com/gpu": 8},'
                             ' "requests": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": 8}}',
    "VIDTUNE_K8S_SHM_SIZE": "64Gi",
    "VIDTUNE_K8S_S3_SECRET": "rel-s3",
    "VIDTUNE_K8S_S3_KEY_NAMES": '{"access-key": "AWS_ACCESS_KEY_ID", "secret-key": "AWS_SECRET_ACCESS_KEY"}',
    "VIDTUNE_K8S_CONFIGMAP": "rel-env",
    "VIDTUNE_K8S_PRIORITY_CLASS": "rel-gpu",
    "VIDTUNE_K8S_QUEUE_NAME": "vidtune-v100",
    "VIDTUNE_K8S_TTL_SECONDS": "600",
    "VIDTUNE_K8S_BACKOFF_LIMIT": "1",
    "VIDTUNE_K8S_ACTIVE_DEADLINE_SECONDS": "604800",
    "VIDTUNE_K8S_LABELS": '{"app.kubernetes.io/instance": "rel"}',
}


def test_cluster_settings_from_the_chart_env_place_the_job():
    settings = kube.ClusterSettings.from_env(CHART_ENV)
    rec = _record()
    m = kube.manifest(kube.worker_job(rec, settings, gpus=2))
    pod = m["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert m["metadata"]["namespace"] == "team-a"
    assert m["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "vidtune-v100" and m["spec"]["suspend"] is True
    assert m["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"] == "rel"
    assert m["spec"]["ttlSecondsAfterFinished"] == 600 and m["spec"]["backoffLimit"] == 1
    assert m["spec"]["activeDeadlineSeconds"] == 604800
    assert pod["priorityClassName"] == "rel-gpu" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "rel-worker"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-V100-PCIE-32GB"}
    assert pod["tolerations"][0]["tolerationSeconds"] == 30
    assert c["image"] == "registry.local/vidtune:1-cu126" and c["imagePullPolicy"] == "Always"
    assert c["envFrom"] == [{"configMapRef": {"name": "rel-env"}}]
    # resources are the chart's for 8 GPUs, scaled to the 2 this job takes
    assert c["resources"]["limits"] == {"cpu": "16", "memory": "120Gi", "nvidia.com/gpu": "2"}
    assert c["resources"]["requests"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
    secret = next(v for v in pod["volumes"] if v["name"] == "s3-credentials")["secret"]
    assert secret["secretName"] == "rel-s3"
    assert {i["path"]: i["key"] for i in secret["items"]} == {"access-key": "AWS_ACCESS_KEY_ID",
                                                              "secret-key": "AWS_SECRET_ACCESS_KEY"}
    assert next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"] == "64Gi"
    for version in VERSIONS:
        validate(m, version, strict=True)
    # a CPU job of the same cluster: no GPU placement, the CPU defaults, still the cluster's identity
    cpu = kube.manifest(kube.worker_job(_record("evaluate.score"), settings, gpus=0))["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu and "tolerations" not in cpu
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert cpu["serviceAccountName"] == "rel-worker"


def test_unset_env_gives_the_defaults_and_bad_json_names_the_variable():
    assert kube.ClusterSettings.from_env({}) == kube.ClusterSettings()
    assert kube.ClusterSettings.from_env({"VIDTUNE_K8S_QUEUE_NAME": "", "VIDTUNE_K8S_PRIORITY_CLASS": ""}).queue_name \
        is None
    with pytest.raises(InvalidArgument, match="VIDTUNE_K8S_NODE_SELECTOR"):
        kube.ClusterSettings.from_env({"VIDTUNE_K8S_NODE_SELECTOR": "gpu=v100"})
    with pytest.raises(InvalidArgument, match="VIDTUNE_K8S_TOLERATIONS: expected a JSON list"):
        kube.ClusterSettings.from_env({"VIDTUNE_K8S_TOLERATIONS": "{}"})
    with pytest.raises(InvalidArgument, match="VIDTUNE_K8S_GPUS"):
        kube.ClusterSettings.from_env({"VIDTUNE_K8S_GPUS": "two"})


@pytest.mark.parametrize("quantity, factor, cpu, expected", [
    ("48Gi", 2, False, "96Gi"), ("480Gi", 0.25, False, "120Gi"), ("1Gi", 0.5, False, "512Mi"),
    ("8", 0.125, True, "1"), ("1", 0.5, True, "500m"), (16, 1, True, "16"),
])
def test_scale_quantity(quantity, factor, cpu, expected):
    assert kube.scale_quantity(quantity, factor, cpu=cpu) == expected


def test_names_and_labels_are_kubernetes_safe():
    assert kube.k8s_name("vidtune", "TN-20261121_x" * 10) == kube.k8s_name("vidtune", "TN-20261121_x" * 10)[:63]
    assert len(kube.k8s_name("a" * 100)) <= 63 and kube.k8s_name("Foo_Bar") == "foo-bar"
    assert kube.label_value("train.run/x y") == "train.run-x-y"


def test_yaml_round_trip():
    text = kube.manifest_yaml(gpu_job())
    data = yaml.safe_load(text)
    assert data["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    validate(data, "1.30.0", strict=True)


def _status(**kw):
    return k8s.V1JobStatus(**kw)


def _cond(kind, reason="", message=""):
    return k8s.V1JobCondition(type=kind, status="True", reason=reason, message=message)


@pytest.mark.parametrize("status, phase", [
    (None, "MISSING"),
    (_status(), QUEUED),
    (_status(active=1), RUNNING),
    (_status(succeeded=1, conditions=[_cond("Complete")]), SUCCEEDED),
    (_status(failed=4, conditions=[_cond("Failed", "BackoffLimitExceeded")]), FAILED),
    (_status(failed=1, conditions=[_cond("FailureTarget", "DeadlineExceeded")]), FAILED),
])
def test_job_phase(status, phase):
    assert kube.job_phase(status) == phase


def test_a_failed_job_fails_its_record_with_the_reason():
    rec = _record(state=RUNNING)
    status = _status(failed=4, conditions=[_cond("Failed", "BackoffLimitExceeded", "Job has reached the limit")])
    assert kube.observe_status(status)["phase"] in kube.ENDED_BADLY
    kube.fail_from_status(rec, status)
    assert rec["state"] == FAILED and "BackoffLimitExceeded" in rec["error"]["message"]
    assert rec["error"]["code"] == 13 and rec["lease"] is None


def test_observations_of_running_and_finished_jobs_end_nothing():
    assert kube.observe_status(_status(active=1)) | {"checked": ""} == \
        {"phase": RUNNING, "active": 1, "succeeded": 0, "failed": 0, "checked": ""}
    assert kube.observe_status(_status(succeeded=1, conditions=[_cond("Complete")]))["phase"] not in kube.ENDED_BADLY


def test_vanished_job_fails_a_queued_record():
    rec = _record()
    assert kube.observe_status(None)["phase"] == "MISSING"
    kube.fail_from_status(rec, None)
    assert rec["state"] == FAILED and "no longer exists" in rec["error"]["message"] and rec["error"]["code"] == 14


@pytest.mark.parametrize("version", VERSIONS)
def test_indexed_worker_job_retries_each_index_and_declares_its_index(version):
    settings = kube.ClusterSettings(backoff_limit=2)
    command = ["vidtune", "worker", "--service", "evaluate", "--job-id", "ev-1-$(JOB_COMPLETION_INDEX)"]
    job = kube.manifest(kube.indexed_worker_job(_record("evaluate.generate"), settings, 8, command, gpus=1))
    validate(job, version, strict=True)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 8, 8)
    assert (spec["backoffLimitPerIndex"], spec["backoffLimit"]) == (2, 16)  # the total caps clusters without it
    assert job["metadata"]["name"].endswith("-shards")
    pod = spec["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == settings.node_selector


@pytest.mark.parametrize("text, indexes", [(None, []), ("", []), ("3", [3]), ("0,2-4,7", [0, 2, 3, 4, 7])])
def test_failed_indexes(text, indexes):
    assert kube.failed_indexes(k8s.V1JobStatus(failed_indexes=text)) == indexes
    assert kube.failed_indexes(None) == []
