"""EvaluateService over real gRPC on loopback: score and compare jobs, clear errors for bad requests."""
from __future__ import annotations

import json
import time

import grpc
import pytest
from eval_clips import textured_clip

from vidtune.evaluate.service import definition
from vidtune.evaluate.videoio import write_mp4
from vidtune.v1 import evaluate_pb2, evaluate_pb2_grpc, jobs_pb2, jobs_pb2_grpc

META = [("authorization", "Bearer test-token")]


def _wait(jobs, job_id: str, timeout: float = 120) -> jobs_pb2.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.GetJob(jobs_pb2.GetJobRequest(id=job_id), metadata=META)
        if job.state in (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish")


def test_score_and_compare_jobs_over_grpc(storage, bucket, jobs_root, serve, tiny_clip_dir, tmp_path):
    for f in tiny_clip_dir.iterdir():
        storage.upload(f, f"{bucket}/clip/{f.name}")
    for ck in ("base", "epoch-1"):
        for seed in (0, 1):
            local = write_mp4(textured_clip(t=9, h=32, w=32, seed=seed + (7 if ck == "epoch-1" else 0)),
                              tmp_path / f"{ck}-{seed}.mp4")
            uri = f"{bucket}/videos/{ck}/cat/seed-{seed}.mp4"
            storage.upload(local, uri)
            storage.write_text(uri.removesuffix(".mp4") + ".json", json.dumps(
                {"checkpoint": ck, "prompt_id": "cat", "prompt": "고양이", "category": "animals", "seed": seed}))
    _, endpoint = serve(definition(storage))
    with grpc.insecure_channel(endpoint) as ch:
        ev, jobs = evaluate_pb2_grpc.EvaluateServiceStub(ch), jobs_pb2_grpc.JobServiceStub(ch)
        job = ev.SubmitScore(evaluate_pb2.ScoreRequest(videos=f"{bucket}/videos/", output=f"{bucket}/scores",
                                                       clip_weights=f"{bucket}/clip"), metadata=META)
        assert job.kind == "evaluate.score"
        done = _wait(jobs, job.id)
        assert done.state == jobs_pb2.SUCCEEDED, done.error.message
        assert done.result["scored"] == 4 and done.result["scores"] == f"{bucket}/scores"

        job = ev.SubmitCompare(evaluate_pb2.CompareRequest(scores=[f"{bucket}/scores"], output=f"{bucket}/report"),
                               metadata=META)
        done = _wait(jobs, job.id)
        assert done.state == jobs_pb2.SUCCEEDED, done.error.message
        assert storage.exists(done.result["report"]) and done.result["report"].endswith("report.html")


def test_bad_requests_are_rejected_with_the_reason(storage, jobs_root, serve):
    _, endpoint = serve(definition(storage))
    with grpc.insecure_channel(endpoint) as ch:
        ev = evaluate_pb2_grpc.EvaluateServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            ev.SubmitScore(evaluate_pb2.ScoreRequest(output="s3://b-x/out"), metadata=META)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "videos: required" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            ev.SubmitGenerate(evaluate_pb2.GenerateRequest(prompts="s3://b-x/p.jsonl", checkpoints=["base"],
                                                           output="s3://b-x/v", num_frames=16), metadata=META)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "4n+1" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            ev.SubmitGenerate(evaluate_pb2.GenerateRequest(prompts="s3://b-x/p.jsonl", checkpoints=["base"],
                                                           output="s3://b-x/v", dtype="float8"), metadata=META)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "dtype must be" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            ev.SubmitScore(evaluate_pb2.ScoreRequest(videos="/etc", output="s3://b-x/out"), metadata=META)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not an s3:// URI" in e.value.details()


def test_kubernetes_backend_puts_generation_on_a_gpu_and_scoring_anywhere(storage, jobs_root, serve, monkeypatch):
    """Generation becomes a one-GPU Job on a V100 node that runs on CUDA; scoring a CPU Job. No cluster here:
    the BatchV1Api is an in-memory stand-in, the Jobs are checked against the official schemas."""
    from kubernetes_validate import validate

    from vidtune.platform import kube

    created = []

    class Batch:
        def create_namespaced_job(self, namespace, body):
            created.append(kube.manifest(body))
            return body

    monkeypatch.setattr(kube, "batch_api", Batch)
    monkeypatch.setenv("VIDTUNE_KUBERNETES", "1")
    _, endpoint = serve(definition(storage))
    with grpc.insecure_channel(endpoint) as ch:
        ev, jobs = evaluate_pb2_grpc.EvaluateServiceStub(ch), jobs_pb2_grpc.JobServiceStub(ch)
        gen = ev.SubmitGenerate(evaluate_pb2.GenerateRequest(
            prompts="s3://b-x/p.jsonl", checkpoints=["base"], output="s3://b-x/v", backend="kubernetes"), metadata=META)
        score = ev.SubmitScore(evaluate_pb2.ScoreRequest(videos="s3://b-x/v", output="s3://b-x/s",
                                                         backend="kubernetes"), metadata=META)
        assert gen.backend == score.backend == "kubernetes"
        spec = dict(jobs.GetJob(jobs_pb2.GetJobRequest(id=gen.id), metadata=META).spec)
    assert spec["device"] == "cuda" and "backend" not in spec
    gen_job, score_job = created
    for job in created:
        validate(job, "1.33.0", strict=True)
    gen_pod, score_pod = gen_job["spec"]["template"]["spec"], score_job["spec"]["template"]["spec"]
    assert gen_pod["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-V100-SXM2-32GB"}
    assert gen_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gen_pod["containers"][0]["args"] == ["worker", "--service", "evaluate", "--job-id", gen.id]
    assert "nodeSelector" not in score_pod and "nvidia.com/gpu" not in score_pod["containers"][0]["resources"]["limits"]
    assert score_job["metadata"]["labels"]["vidtune.io/kind"] == "evaluate.score"


def test_unavailable_backend_is_an_invalid_argument(storage, jobs_root, serve, monkeypatch):
    monkeypatch.delenv("VIDTUNE_KUBERNETES", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    _, endpoint = serve(definition(storage))
    with grpc.insecure_channel(endpoint) as ch:
        ev = evaluate_pb2_grpc.EvaluateServiceStub(ch)
        for backend in ("kubernetes", "slurm"):
            with pytest.raises(grpc.RpcError) as e:
                ev.SubmitCompare(evaluate_pb2.CompareRequest(scores=["s3://b-x/s"], output="s3://b-x/r",
                                                             backend=backend), metadata=META)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"backend {backend!r} is not available here" in e.value.details()
