"""TrainService over real gRPC on loopback (jobs in a real S3 store), the local launcher, and the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest
import yaml
from google.protobuf import json_format
from kubernetes_validate import validate

from vidtune.train.service import definition
from vidtune.v1 import jobs_pb2, jobs_pb2_grpc, train_pb2, train_pb2_grpc

AUTH = [("authorization", "Bearer test-token")]


@pytest.fixture
def s3_dataset(storage, bucket, tiny_dataset) -> str:
    root = f"{bucket}/dataset"
    for p in tiny_dataset.rglob("*"):
        if p.is_file():
            storage.upload(p, f"{root}/{p.relative_to(tiny_dataset)}")
    return root


def _follow(channel, job_id):
    updates = list(jobs_pb2_grpc.JobServiceStub(channel).WatchJob(jobs_pb2.WatchJobRequest(id=job_id),
                                                                   metadata=AUTH, timeout=300))
    final = updates[-1]
    assert final.state == jobs_pb2.SUCCEEDED, final.error.message
    return updates, json_format.MessageToDict(final.result)


@pytest.mark.parametrize("backend", ["inprocess", "local"])
def test_submit_watch_and_result(serve, storage, jobs_root, bucket, s3_dataset, backend):
    server, address = serve(definition(storage))
    out = f"{bucket}/runs/{backend}"
    with grpc.insecure_channel(address) as ch:
        stub = train_pb2_grpc.TrainServiceStub(ch)
        job = stub.SubmitTrain(train_pb2.TrainRequest(preset="cpu-tiny", config_yaml="save_every_steps: 2\n",
                                                      dataset=s3_dataset, output=out, max_steps=3, backend=backend),
                               metadata=AUTH, timeout=10)
        assert job.kind == "train.run" and job.backend == backend
        updates, result = _follow(ch, job.id)
    assert result["steps"] == 3 and result["total_steps"] == 8
    assert any("loss=" in u.progress.message for u in updates) or backend == "local"
    assert storage.exists(result["lora"]) and storage.exists(result["loss_png"])
    lines = storage.read_text(f"{out}/metrics.jsonl").splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]


def test_bad_requests_are_invalid_arguments(serve, storage, jobs_root, bucket, s3_dataset):
    server, address = serve(definition(storage))
    with grpc.insecure_channel(address) as ch:
        stub = train_pb2_grpc.TrainServiceStub(ch)
        for req, words in [
            (train_pb2.TrainRequest(preset="cpu-tiny", dataset=s3_dataset), "output"),
            (train_pb2.TrainRequest(preset="cpu-tiny", config_yaml="num_frames: 8", dataset=s3_dataset,
                                    output=f"{bucket}/x"), "4n+1"),
            (train_pb2.TrainRequest(preset="cpu-tiny", dataset=s3_dataset, output=f"{bucket}/x",
                                    backend="kubernetes"), "backend"),
            (train_pb2.TrainRequest(preset="cpu-tiny", config_yaml="num_nodes: 2", dataset=s3_dataset,
                                    output=f"{bucket}/x"), "TrainJob"),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                stub.SubmitTrain(req, metadata=AUTH, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details()
        presets = stub.ListPresets(train_pb2.ListPresetsRequest(), metadata=AUTH, timeout=10).presets
        v100 = next(p for p in presets if p.name == "v100-2gpu-ti2v-5b-480x832x49")
        assert v100.precision == "fp16" and v100.gpus == 2 and 0 < v100.memory_per_gpu_gb <= 32


def _vidtune(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "vidtune.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or os.environ.copy())


def test_cli_dry_run_prints_a_manifest_kubectl_accepts():
    proc = _vidtune("train", "submit", "--backend", "kubernetes", "--dry-run",
                    "--preset", "v100-2gpu-ti2v-5b-480x832x49", "--set", "weights=s3://vidtune/models/wan2.2-ti2v-5b",
                    "--dataset", "s3://vidtune/datasets/demo", "--out", "s3://vidtune/runs/first", timeout=120)
    assert proc.returncode == 0, proc.stderr
    manifest = yaml.safe_load(proc.stdout)
    for version in ("1.28.0", "1.33.0"):
        validate(manifest, version, strict=True)
    pod = manifest["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-V100-SXM2-32GB"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["command"] == ["torchrun"] and "train" in c["args"] and "run" in c["args"]
    config = json.loads(c["args"][c["args"].index("--config") + 1])
    assert config["preset"] == "v100-2gpu-ti2v-5b-480x832x49"


def test_cli_dry_run_refuses_what_a_pod_cannot_read(capsys):
    from vidtune.cli import main

    assert main(["train", "submit", "--backend", "kubernetes", "--dry-run", "--preset", "cpu-tiny",
                 "--dataset", "./ds", "--out", "s3://vidtune/runs/x", "--set", "sample_prompts=sp.jsonl",
                 "--set", "weights=s3://vidtune/models/w"]) == 2
    err = capsys.readouterr().err
    assert "these are local: --dataset './ds', sample_prompts 'sp.jsonl' (upload with `vidtune store cp`)" in err


def test_cli_run_in_process(tiny_dataset, tmp_path):
    out = tmp_path / "cli-run"
    proc = _vidtune("train", "run", "--preset", "cpu-tiny", "--dataset", str(tiny_dataset), "--out", str(out),
                    "--max-steps", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == 2 and (out / "lora.safetensors").exists()


def test_kubernetes_backend_builds_the_job_from_the_cluster_settings(serve, storage, jobs_root, bucket, s3_dataset,
                                                                     monkeypatch):
    """With VIDTUNE_KUBERNETES=1 the service offers the kubernetes backend and creates the worker Job with the
    chart's VIDTUNE_K8S_* settings; no cluster here, so the BatchV1Api is an in-memory stand-in."""
    from vidtune.platform import kube

    created = []

    class Batch:
        def create_namespaced_job(self, namespace, body):
            created.append((namespace, body))
            return body

    monkeypatch.setattr(kube, "batch_api", Batch)
    monkeypatch.setenv("VIDTUNE_KUBERNETES", "1")
    monkeypatch.setenv("VIDTUNE_K8S_NAMESPACE", "team-a")
    monkeypatch.setenv("VIDTUNE_K8S_QUEUE_NAME", "vidtune-v100")
    monkeypatch.setenv("VIDTUNE_K8S_NODE_SELECTOR", '{"nvidia.com/gpu.product": "Tesla-V100-PCIE-32GB"}')
    server, address = serve(definition(storage))
    with grpc.insecure_channel(address) as ch:
        job = train_pb2_grpc.TrainServiceStub(ch).SubmitTrain(train_pb2.TrainRequest(
            preset="v100-2gpu-ti2v-5b-480x832x49", config_yaml="weights: s3://vidtune/models/wan2.2-ti2v-5b\n",
            dataset=s3_dataset, output=f"{bucket}/runs/k8s", backend="kubernetes", timeout_s=3600),
            metadata=AUTH, timeout=10)
        assert job.backend == "kubernetes" and job.state == jobs_pb2.QUEUED
    ((namespace, body),) = created
    manifest = kube.manifest(body)
    validate(manifest, "1.33.0", strict=True)
    pod = manifest["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert namespace == "team-a" and manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "vidtune-v100"
    assert manifest["metadata"]["labels"]["vidtune.io/job-id"] == job.id
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-V100-PCIE-32GB"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" and manifest["spec"]["activeDeadlineSeconds"] == 3600
    assert c["args"][-4:] == ["--service", "train", "--job-id", job.id] and c["command"] == ["torchrun"]
    # the reconciler finds the Job by the name derived from the record
    assert manifest["metadata"]["name"] == kube.k8s_name("vidtune", job.id)


def test_submit_sends_the_configs_local_paths_absolute(serve, storage, jobs_root, bucket, tmp_path, monkeypatch,
                                                        capsys):
    """The service may run in another directory: the config's own locations are sent absolute, like
    --dataset and --out, so the job reads what the user named."""
    from vidtune.cli import main

    monkeypatch.setenv("VIDTUNE_ALLOW_LOCAL_PATHS", "1")
    _, address = serve(definition(storage))
    monkeypatch.setenv("VIDTUNE_TRAIN_ENDPOINT", address)
    monkeypatch.setenv("VIDTUNE_TOKEN", "test-token")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "submit", "--preset", "cpu-tiny", "--dataset", "./data", "--out", "./run",
                 "--set", "sample_prompts=./prompts.jsonl", "--set", "validation_dataset=held-out",
                 "--set", "weights=./weights", "--max-steps", "1"]) == 0
    job_id = capsys.readouterr().out.split()[-1]  # the in-process service's DeepSpeed banner comes before it
    with grpc.insecure_channel(address) as ch:
        job = jobs_pb2_grpc.JobServiceStub(ch).GetJob(jobs_pb2.GetJobRequest(id=job_id), metadata=AUTH, timeout=10)
        jobs_pb2_grpc.JobServiceStub(ch).CancelJob(jobs_pb2.CancelJobRequest(id=job_id), metadata=AUTH, timeout=10)
    job = json_format.MessageToDict(job, preserving_proto_field_name=True)
    config = yaml.safe_load(job["spec"]["config"])
    assert (config["sample_prompts"], config["validation_dataset"], config["weights"]) == (
        str(tmp_path / "prompts.jsonl"), str(tmp_path / "held-out"), str(tmp_path / "weights"))
    assert (job["spec"]["dataset"], job["spec"]["output"]) == (str(tmp_path / "data"), str(tmp_path / "run"))

    # Per-role weights, lists of shards, URIs and empty values: only local paths change.
    (tmp_path / "c.yaml").write_text("weights: {dit: [d1, s3://vidtune/d2], vae: null, text_encoder: ./te}\n"
                                     "sample_prompts:\nvalidation_dataset: ~\n")
    assert main(["train", "submit", "--preset", "cpu-tiny", "--config", "c.yaml", "--dataset", "./data",
                 "--out", "./run2", "--max-steps", "1"]) == 0
    job_id = capsys.readouterr().out.split()[-1]
    with grpc.insecure_channel(address) as ch:
        job = jobs_pb2_grpc.JobServiceStub(ch).GetJob(jobs_pb2.GetJobRequest(id=job_id), metadata=AUTH, timeout=10)
        jobs_pb2_grpc.JobServiceStub(ch).CancelJob(jobs_pb2.CancelJobRequest(id=job_id), metadata=AUTH, timeout=10)
    config = yaml.safe_load(json_format.MessageToDict(job, preserving_proto_field_name=True)["spec"]["config"])
    assert config["weights"] == {"dit": [str(tmp_path / "d1"), "s3://vidtune/d2"], "vae": None,
                                 "text_encoder": str(tmp_path / "te")}
    assert config["sample_prompts"] is None and config["validation_dataset"] is None
