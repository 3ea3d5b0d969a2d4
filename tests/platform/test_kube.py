"""Kubernetes Job manifests (validated offline against the official schemas) and status -> record."""
from __future__ import annotations

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes_validate import validate

from vidtune.platform import kube
from vidtune.platform.jobs import FAILED, QUEUED, RUNNING, SUCCEEDED, new_record, transition

VERSIONS = ["1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]


def _record(kind="train.run", state=QUEUED):
    rec = new_record(kind.split(".")[0], kind, {"preset": "v100-2gpu-ti2v-5b-480x832x49"}, backend="kubernetes")
    if state != QUEUED:
        transition(rec, state)
    return rec


def gpu_job(gpus=2):
    return kube.worker_job(_record(), image="ghcr.io/vidtune/vidtune:0.1.0-cu126", namespace="vidtune", gpus=gpus,
                           active_deadline_seconds=86400, memory_limit="96Gi")


@pytest.mark.parametrize("version", VERSIONS)
def test_gpu_worker_job_is_valid_for_every_supported_version(version):
    validate(kube.manifest(gpu_job()), version, strict=True)


def test_gpu_job_placement_and_links():
    rec = _record()
    job = kube.worker_job(rec, image="img:1", gpus=2, active_deadline_seconds=3600)
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
    assert m["spec"]["backoffLimit"] == 3 and m["spec"]["activeDeadlineSeconds"] == 3600
    assert m["spec"]["ttlSecondsAfterFinished"] == 86400
    assert m["metadata"]["labels"][kube.LABEL_JOB_ID] == rec["id"]
    assert m["spec"]["template"]["metadata"]["labels"][kube.LABEL_KIND] == "train.run"
    # two GPUs: one worker process per GPU through torchrun, running the same worker command
    assert [c["command"][0], *c["args"]][:3] == ["torchrun", "--standalone", "--nproc_per_node=2"]
    assert c["args"][-5:] == ["worker", "--service", "train", "--job-id", rec["id"]]


def test_cpu_job_has_no_gpu_placement_and_an_indexed_variant_validates():
    rec = _record("transcode.batch")
    job = kube.worker_job(rec, image="img:1", completions=4, parallelism=2, indexed=True)
    m = kube.manifest(job)
    pod = m["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["requests"]
    assert m["spec"]["completionMode"] == "Indexed"
    validate(m, "1.33.0", strict=True)


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


def test_failed_job_fails_a_running_record_with_the_reason():
    rec = _record(state=RUNNING)
    status = _status(failed=4, conditions=[_cond("Failed", "BackoffLimitExceeded", "Job has reached the limit")])
    assert kube.apply_status(rec, status)
    assert rec["state"] == FAILED and "BackoffLimitExceeded" in rec["error"]["message"]
    assert rec["kubernetes"]["failed"] == 4
    assert not kube.apply_status(rec, status)  # terminal records are left alone


def test_running_and_finished_jobs_leave_the_worker_in_charge():
    rec = _record(state=RUNNING)
    assert kube.apply_status(rec, _status(active=1))  # phase recorded
    assert rec["state"] == RUNNING and rec["kubernetes"]["phase"] == RUNNING
    assert not kube.apply_status(rec, _status(active=1))
    done = _record(state=RUNNING)
    transition(done, SUCCEEDED)
    assert not kube.apply_status(done, _status(failed=1, conditions=[_cond("Failed")]))
    assert done["state"] == SUCCEEDED


def test_vanished_job_fails_a_queued_record():
    rec = _record()
    assert kube.apply_status(rec, None)
    assert rec["state"] == FAILED and "no longer exists" in rec["error"]["message"]
