"""Every URI named inside a file a job reads goes through the access policy: a running service (real gRPC
over loopback, real S3 store) with local paths off reads 0 local files and records each refusal with its
reason, while the rest of the batch goes on."""
from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from canary import leaked_bytes

from vidtune.platform.access import AccessPolicy
from vidtune.platform.errors import InvalidArgument
from vidtune.v1 import jobs_pb2, jobs_pb2_grpc

AUTH = [("authorization", "Bearer test-token")]
LOCAL_OFF = "local paths are off"


def _finish(channel, job_id: str, timeout: float = 300) -> jobs_pb2.Job:
    """The job's record once it has ended (the watch stream's last message)."""
    *_, last = jobs_pb2_grpc.JobServiceStub(channel).WatchJob(jobs_pb2.WatchJobRequest(id=job_id), metadata=AUTH,
                                                              timeout=timeout)
    assert last.state in (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED), last
    return last


def _clip(storage, uri: str, seed: int = 0) -> str:
    import tempfile
    from pathlib import Path

    from vidtune.evaluate.videoio import write_mp4

    # 17 frames: FVD (StyleGAN-V protocol) discards reference clips shorter than 16 frames.
    frames = np.random.default_rng(seed).integers(0, 255, (17, 64, 64, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as d:
        storage.upload(write_mp4(frames, Path(d) / "c.mp4"), uri)
    return uri


def test_policy_names_the_item_and_the_reason():
    policy = AccessPolicy(allow_local=False, buckets=frozenset({"media"}), prefix="team-a/")
    for uri, words in [("/etc/passwd", "not an s3:// URI"), ("file:///etc/passwd", "not an s3:// URI"),
                       ("s3://media/team-a/../x", "'..'"), ("s3://other/team-a/x", "bucket 'other'"),
                       ("s3://media/team-b/x", "outside the allowed prefix 'team-a/'"), ("", "empty URI")]:
        with pytest.raises(InvalidArgument, match="manifest m.txt line 2") as e:
            policy.check(uri, "manifest m.txt line 2")
        assert words in str(e.value)
    assert policy.check("s3://media/team-a/x.mp4", "inputs") == "s3://media/team-a/x.mp4"
    assert AccessPolicy(allow_local=True).check("/data/x.mp4") == "/data/x.mp4"


def test_transcode_manifest_lines_and_directories(serve, service_storage, bucket, jobs_root, canary_dir, touched):
    from vidtune.transcode.service import definition
    from vidtune.v1 import transcode_pb2, transcode_pb2_grpc

    good = _clip(service_storage, f"{bucket}/in/good.mp4")
    local = [str(canary_dir / "clip.mp4"), str(canary_dir / "dir"), str(canary_dir / "secret.txt"),
             f"file://{canary_dir}/clip.mp4"]
    service_storage.write_text(f"{bucket}/in/list.txt", "\n".join(["# archive", good, *local]) + "\n")
    _, address = serve(definition(service_storage))
    with grpc.insecure_channel(address) as ch:
        job = transcode_pb2_grpc.TranscodeServiceStub(ch).SubmitTranscode(transcode_pb2.TranscodeRequest(
            inputs=[f"{bucket}/in/list.txt"], output=f"{bucket}/out", profile="wan-480p"), metadata=AUTH)
        done = _finish(ch, job.id)
    assert done.state == jobs_pb2.SUCCEEDED, done.error.message
    rows = {r["input"]: r for r in service_storage.read_jsonl(done.result["report"])}
    assert rows[good]["status"] == "ok"
    for path in local:
        assert rows[path]["status"] == "failed"
        assert f"manifest {bucket}/in/list.txt" in rows[path]["reason"] and "not an s3:// URI" in rows[path]["reason"]
    assert touched == [] and leaked_bytes(service_storage, bucket) == 0


def test_training_metadata_rows(serve, service_storage, bucket, jobs_root, canary_dir, touched, monkeypatch,
                                tmp_path):
    from vidtune.train.service import definition
    from vidtune.v1 import train_pb2, train_pb2_grpc

    monkeypatch.setenv("VIDTUNE_CACHE_DIR", str(tmp_path / "cache"))
    for i in range(2):
        _clip(service_storage, f"{bucket}/ds/clip{i}.mp4", seed=i)
    service_storage.write_text(f"{bucket}/ds/metadata.csv", "video,prompt\nclip0.mp4,a red car\nclip1.mp4,고양이\n"
                               f"{canary_dir / 'clip.mp4'},local secret\n")
    _, address = serve(definition(service_storage))
    with grpc.insecure_channel(address) as ch:
        job = train_pb2_grpc.TrainServiceStub(ch).SubmitTrain(train_pb2.TrainRequest(
            preset="cpu-tiny", dataset=f"{bucket}/ds", output=f"{bucket}/run", max_steps=1), metadata=AUTH)
        done = _finish(ch, job.id)
    assert done.state == jobs_pb2.SUCCEEDED, done.error.message
    rejected = [r for u in service_storage.list(f"{bucket}/run/") if "rejected-" in u
                for r in service_storage.read_jsonl(u)]
    assert [r["id"] for r in rejected] == [str(canary_dir / "clip.mp4")]
    assert "not an s3:// URI" in rejected[0]["reason"]
    assert touched == [] and leaked_bytes(service_storage, bucket) == 0


def test_training_config_weights(serve, service_storage, bucket, jobs_root, canary_dir, touched):
    from vidtune.models.loading import resolve_weights
    from vidtune.train.service import definition
    from vidtune.v1 import train_pb2, train_pb2_grpc

    _, address = serve(definition(service_storage))
    with grpc.insecure_channel(address) as ch:
        for weights in (str(canary_dir / "weights"), f"{{dit: {canary_dir / 'weights'}}}"):
            with pytest.raises(grpc.RpcError) as e:
                train_pb2_grpc.TrainServiceStub(ch).SubmitTrain(train_pb2.TrainRequest(
                    preset="cpu-tiny", config_yaml=f"weights: {weights}\n", dataset=f"{bucket}/ds",
                    output=f"{bucket}/run"), metadata=AUTH)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "config weights" in e.value.details() and "not an s3:// URI" in e.value.details()
    # A config that reached a worker without passing submit (kubectl, an old record) is refused at load.
    with pytest.raises(InvalidArgument, match="weights of tiny-ti2v.*not an s3:// URI"):
        resolve_weights("tiny-ti2v", str(canary_dir / "weights"), storage=service_storage)
    assert touched == []


def test_prompt_image_and_reference_clips(serve, service_storage, bucket, jobs_root, canary_dir, touched,
                                         monkeypatch, tmp_path):
    from vidtune.evaluate.service import definition
    from vidtune.evaluate.tiny import build_tiny_i3d
    from vidtune.v1 import evaluate_pb2, evaluate_pb2_grpc

    monkeypatch.setenv("VIDTUNE_CACHE_DIR", str(tmp_path / "cache"))
    prompts = [{"id": "local", "prompt": "a red square", "image": str(canary_dir / "frame.png")},
               {"id": "plain", "prompt": "a red square"}]
    service_storage.write_jsonl(f"{bucket}/prompts.jsonl", prompts)
    service_storage.upload(build_tiny_i3d(tmp_path / "i3d.pt"), f"{bucket}/i3d.pt")
    ref = _clip(service_storage, f"{bucket}/ref/general/a.mp4")
    service_storage.write_jsonl(f"{bucket}/ref.jsonl", [{"video": str(canary_dir / "clip.mp4"), "category": "general"},
                                                        {"video": ref, "category": "general"}])
    _, address = serve(definition(service_storage))
    with grpc.insecure_channel(address) as ch:
        ev = evaluate_pb2_grpc.EvaluateServiceStub(ch)
        gen = _finish(ch, ev.SubmitGenerate(evaluate_pb2.GenerateRequest(
            prompts=f"{bucket}/prompts.jsonl", checkpoints=["base"], output=f"{bucket}/videos", seeds=[0],
            num_frames=5, steps=1), metadata=AUTH).id)
        summary = json.loads(service_storage.read_text(f"{bucket}/videos/generation.json"))
        score = _finish(ch, ev.SubmitScore(evaluate_pb2.ScoreRequest(
            videos=f"{bucket}/videos/", output=f"{bucket}/scores", i3d=f"{bucket}/i3d.pt",
            reference=f"{bucket}/ref.jsonl"), metadata=AUTH).id)
    assert gen.state == jobs_pb2.SUCCEEDED and summary["generated"] == 1
    [failed] = summary["failed"]
    assert failed["prompt_id"] == "local" and "not an s3:// URI" in failed["error"]
    assert score.state == jobs_pb2.SUCCEEDED, score.error.message
    index = service_storage.read_text(f"{bucket}/scores/reference/index.json")
    assert ref.rsplit("/", 1)[0] in index and str(canary_dir) not in index
    assert touched == [] and leaked_bytes(service_storage, bucket) == 0
