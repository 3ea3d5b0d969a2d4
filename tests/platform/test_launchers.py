"""Launchers shared by the train and evaluate services: backend choice, the Kubernetes launcher and the
reconciler (against an in-memory BatchV1Api: no cluster here; the Jobs are checked against the official
schemas), and the local subprocess launcher running a real `vidtune worker`."""
from __future__ import annotations

import copy

import pytest
from kubernetes import client as k8s
from kubelet import InMemoryBatchApi  # tests/pipeline/kubelet.py
from kubernetes_validate import validate

from vidtune.platform import kube, launchers
from vidtune.platform.errors import InvalidArgument
from vidtune.platform.jobs import FAILED, RUNNING, SUCCEEDED, JobManager, JobStore, new_record, transition


def test_backend_choice_names_what_is_available():
    assert launchers.choose_backend("", {}) == "inprocess"
    assert launchers.choose_backend("local", {"local": print}) == "local"
    with pytest.raises(InvalidArgument, match=r"backend 'kubernetes' is not available here \(kubernetes needs"):
        launchers.choose_backend("kubernetes", {"local": print})
    with pytest.raises(InvalidArgument, match="choose one of inprocess, local"):
        launchers.choose_backend("slurm", {"local": print})


def test_kubernetes_is_enabled_in_a_pod_or_when_asked():
    assert not launchers.kubernetes_enabled({})
    assert launchers.kubernetes_enabled({"VIDTUNE_KUBERNETES": "1"})
    assert launchers.kubernetes_enabled({"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert not launchers.kubernetes_enabled({"VIDTUNE_KUBERNETES": "0"})


def test_service_launchers_offer_kubernetes_only_when_enabled(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("VIDTUNE_KUBERNETES", raising=False)
    assert sorted(launchers.service_launchers("evaluate", lambda r: {})) == ["local"]
    monkeypatch.setenv("VIDTUNE_KUBERNETES", "1")
    assert sorted(launchers.service_launchers("evaluate", lambda r: {})) == ["kubernetes", "local"]


def test_kubernetes_launcher_places_by_record_and_reconciler_fails_a_dead_job(storage, jobs_root):
    api = InMemoryBatchApi()
    settings = kube.ClusterSettings(namespace="team-a")
    launch = launchers.kubernetes_launcher(
        "evaluate", lambda rec: {"gpus": 1 if rec["kind"] == "evaluate.generate" else 0}, settings, api)
    manager = JobManager("evaluate", storage, jobs_root, {"evaluate.generate": dict, "evaluate.score": dict},
                         launchers={"kubernetes": launch})
    gen = manager.submit("evaluate.generate", {"prompts": "s3://b/p.jsonl"}, backend="kubernetes")
    score = manager.submit("evaluate.score", {"videos": "s3://b/v/"}, backend="kubernetes")
    assert len(api.jobs) == 2
    gen_job = api.jobs[("team-a", gen["labels"]["kubernetes-job"])]
    score_job = api.jobs[("team-a", score["labels"]["kubernetes-job"])]
    for job in (gen_job, score_job):
        validate(kube.manifest(job), "1.33.0", strict=True)
    gen_pod = gen_job.spec.template.spec
    assert gen_pod.node_selector == kube.DEFAULT_GPU_NODE_SELECTOR
    assert gen_pod.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert gen_pod.containers[0].args[-4:] == ["--service", "evaluate", "--job-id", gen["id"]]
    assert gen_job.metadata.labels[kube.LABEL_JOB_ID] == gen["id"]
    assert score_job.spec.template.spec.node_selector is None
    assert "nvidia.com/gpu" not in score_job.spec.template.spec.containers[0].resources.limits
    with pytest.raises(InvalidArgument, match="belongs to train"):
        launch(new_record("train", "train.run", {}, backend="kubernetes"))

    # The generate pod starts (the worker writes RUNNING), then its Job fails; the score Job vanishes.
    store = JobStore(storage, jobs_root, "evaluate")
    running, version = store.load_versioned(gen["id"])
    transition(running, RUNNING)
    running["lease"] = {"holder": "pod-that-died", "expires": "2000-01-01T00:00:00+00:00"}
    store.replace(running, version)
    gen_job.status = k8s.V1JobStatus(failed=3, conditions=[k8s.V1JobCondition(
        type="Failed", status="True", reason="BackoffLimitExceeded", message="Job has reached the specified backoff limit")])
    del api.jobs[("team-a", score["labels"]["kubernetes-job"])]
    # While a live pod holds the generate record, a failed Job status does not end it: the pod will.
    reconciler = launchers.KubeReconciler(store, "team-a", api=api)
    assert sorted(reconciler.reconcile_once()) == sorted([gen["id"], score["id"]])
    failed = store.load(gen["id"])
    assert failed["state"] == FAILED and "BackoffLimitExceeded" in failed["error"]["message"]
    gone = store.load(score["id"])
    assert gone["state"] == FAILED and "no longer exists" in gone["error"]["message"]
    assert reconciler.reconcile_once() == []  # terminal records are left alone


def test_reconciler_leaves_finished_and_other_backends_alone(storage, jobs_root):
    api = InMemoryBatchApi()
    store = JobStore(storage, jobs_root, "train")
    done = new_record("train", "train.run", {}, backend="kubernetes")
    transition(done, RUNNING)
    transition(done, SUCCEEDED)
    local = new_record("train", "train.run", {}, backend="local")
    for rec in (done, local):
        store.create(rec)
    before = copy.deepcopy([store.load(done["id"]), store.load(local["id"])])
    assert launchers.KubeReconciler(store, "vidtune", api=api).reconcile_once() == []
    assert [store.load(done["id"]), store.load(local["id"])] == before


def test_local_launcher_runs_a_worker_subprocess(storage, jobs_root, tmp_path, s3_env, monkeypatch):
    """`vidtune worker` in a child process takes the record to its end and logs to <log dir>/<id>.log."""
    manager = JobManager("evaluate", storage, jobs_root, {"evaluate.compare": dict},
                         launchers={"local": launchers.local_launcher("evaluate", tmp_path / "logs")})
    # No scores exist (the spec skipped the edge validation): the worker runs the real handler and records its clear failure.
    rec = manager.submit("evaluate.compare", {"scores": [], "output": ""}, backend="local")
    assert rec["labels"]["pid"]
    final = list(manager.watch(rec["id"], timeout=120))[-1]
    assert final["state"] == FAILED and "no scored videos" in final["error"]["message"]
    assert (tmp_path / "logs" / f"{rec['id']}.log").exists()


def test_timeout_of_a_spec():
    assert launchers.timeout_of({"timeout_s": 60}) == 60
    assert launchers.timeout_of({}) == launchers.DEFAULT_TIMEOUT_S
