"""`make attack`: an attacker with a valid token against a local stack configured as on a cluster (local
paths off, one bucket, a key prefix, no bucket creation). Prints one row per attempt: what was tried, whether
and how it was refused, and how many bytes of the planted secrets reached anything the attacker can read
(job records, reports, outputs). Exit status 1 if any attempt got through or leaked a byte.

    PYTHONPATH=services .venv/bin/python tests/security/attack.py [--base-port 52300] [--skip-train]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from canary import SECRET  # noqa: E402

BUCKET, PREFIX = "vidtune", "work/"
WORK = f"s3://{BUCKET}/{PREFIX}attack"
POLICY_ENV = {"VIDTUNE_ALLOW_LOCAL_PATHS": "0", "VIDTUNE_S3_BUCKETS": BUCKET, "VIDTUNE_S3_PREFIX": PREFIX,
              "VIDTUNE_JOBS_ROOT": f"s3://{BUCKET}/{PREFIX}jobs", "VIDTUNE_CREATE_BUCKETS": "0"}


def plant(canary: Path, admin) -> dict:
    """Local files and objects outside the attacker's reach, each holding the secret."""
    from vidtune.evaluate.videoio import write_mp4

    frames = np.random.default_rng(0).integers(0, 255, (9, 64, 64, 3), dtype=np.uint8)
    write_mp4(frames, canary / "clip.mp4")
    with open(canary / "clip.mp4", "ab") as f:
        f.write(SECRET)
    (canary / "dir").mkdir()
    write_mp4(frames, canary / "dir" / "b.mp4")
    (canary / "secret.txt").write_bytes(SECRET)
    (canary / "frame.png").write_bytes(_png(SECRET))
    (canary / "weights").mkdir()
    (canary / "weights" / "dit.safetensors").write_bytes(SECRET)
    admin.ensure_bucket(BUCKET)  # as the install hook would
    admin.write_bytes(f"s3://{BUCKET}/private/secret.txt", SECRET)
    good = f"{WORK}/in/good.mp4"
    with tempfile.TemporaryDirectory() as d:
        admin.upload(write_mp4(frames, Path(d) / "g.mp4"), good)
        admin.upload(write_mp4(frames, Path(d) / "g.mp4"), f"{WORK}/ds/clip0.mp4")
    from test_limits import png_bomb

    bomb = png_bomb(12_000)
    admin.write_bytes(f"{WORK}/in/bomb.png", bomb)
    return {"good": good, "bomb_kb": len(bomb) // 1024}


def _png(secret: bytes) -> bytes:
    import io

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("secret", secret.decode())
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


class Attacker:
    def __init__(self, state: dict, admin):
        self.state, self.admin = state, admin
        self.auth = [("authorization", f"Bearer {state['token']}")]
        self.rows: list[tuple[str, str, int]] = []

    def channel(self, service: str):
        return grpc.insecure_channel(f"127.0.0.1:{self.state['ports'][service]}")

    def submit(self, service: str, rpc: str, request):
        from vidtune.v1 import evaluate_pb2_grpc, quality_pb2_grpc, train_pb2_grpc, transcode_pb2_grpc

        stubs = {"transcode": transcode_pb2_grpc.TranscodeServiceStub, "quality": quality_pb2_grpc.QualityServiceStub,
                 "train": train_pb2_grpc.TrainServiceStub, "evaluate": evaluate_pb2_grpc.EvaluateServiceStub}
        with self.channel(service) as ch:
            return getattr(stubs[service](ch), rpc)(request, metadata=self.auth, timeout=30)

    def finish(self, service: str, job_id: str, timeout: float = 600) -> dict:
        from google.protobuf import json_format

        from vidtune.v1 import jobs_pb2, jobs_pb2_grpc

        deadline = time.monotonic() + timeout
        with self.channel(service) as ch:
            while time.monotonic() < deadline:
                job = jobs_pb2_grpc.JobServiceStub(ch).GetJob(jobs_pb2.GetJobRequest(id=job_id), metadata=self.auth)
                if job.state in (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED):
                    return json_format.MessageToDict(job, preserving_proto_field_name=True)
                time.sleep(0.5)
        raise TimeoutError(job_id)

    def leaked(self, prefix: str, *texts: str) -> int:
        """Bytes of the secret in what the attacker can read: objects below `prefix` and the given texts."""
        n = sum(t.encode().count(SECRET) for t in texts)
        n += sum(self.admin.read_bytes(u).count(SECRET) for u in self.admin.list(prefix.rstrip("/") + "/"))
        return n * len(SECRET)

    def run_job(self, service: str, rpc: str, request) -> tuple[dict | None, grpc.RpcError | None]:
        """The finished job a submit started, or the error that refused the submit."""
        try:
            job = self.submit(service, rpc, request)
        except grpc.RpcError as e:
            return None, e
        return self.finish(service, job.id), None

    def at_submit(self, attempt: str, service: str, rpc: str, request) -> None:
        """An attempt that must be refused before a job exists."""
        done, error = self.run_job(service, rpc, request)
        if error is not None:
            self.rows.append((attempt, f"yes: {error.code().name} {_short(error.details())}", 0))
        else:
            self.rows.append((attempt, f"NO: job {done['state']}", self.leaked(WORK, json.dumps(done))))

    def per_item(self, attempt: str, service: str, rpc: str, request, refused_items, out: str) -> None:
        """An attempt whose bad items sit inside a file the job reads: each must be refused, the rest go on."""
        done, error = self.run_job(service, rpc, request)
        if error is not None:
            self.rows.append((attempt, f"NO (submit failed: {error.code().name} {error.details()[:60]})", 0))
            return
        refused, total = refused_items(done)
        ok = refused == total and total > 0
        how = f"{refused}/{total} items refused, job {done['state']}"
        self.rows.append((attempt, ("yes: " if ok else "NO: ") + how, self.leaked(out, json.dumps(done))))


def _short(text: str) -> str:
    return text if len(text) <= 90 else text[:87] + "..."


def run(base_port: int, skip_train: bool) -> int:
    from vidtune.platform import stack
    from vidtune.platform.storage import S3Config, Storage
    from vidtune.v1 import evaluate_pb2, quality_pb2, train_pb2, transcode_pb2

    home = Path(tempfile.mkdtemp(prefix="vt-attack-"))
    canary = home / "canary"
    canary.mkdir()
    services = ["transcode", "quality", "evaluate"] + ([] if skip_train else ["train"])
    print(f"starting a local stack in {home} (local paths off, bucket {BUCKET}, prefix {PREFIX}) ...", file=sys.stderr)
    state = stack.up(home, services, base_port, timeout=180,
                     extra_env={**POLICY_ENV, "VIDTUNE_CACHE_DIR": str(home / "cache")})
    try:
        admin = Storage(S3Config.from_env(state["s3"]))
        ctx = plant(canary, admin)
        a = Attacker(state, admin)
        local_clip = str(canary / "clip.mp4")

        a.at_submit("transcode a local file", "transcode", "SubmitTranscode",
                    transcode_pb2.TranscodeRequest(inputs=[local_clip], output=f"{WORK}/t1"))
        a.at_submit("transcode a file:// URI", "transcode", "SubmitTranscode",
                    transcode_pb2.TranscodeRequest(inputs=[f"file://{local_clip}"], output=f"{WORK}/t2"))
        a.at_submit("escape the prefix with '..'", "transcode", "SubmitTranscode",
                    transcode_pb2.TranscodeRequest(inputs=[f"s3://{BUCKET}/{PREFIX}../private/secret.txt"],
                                                   output=f"{WORK}/t3"))
        a.at_submit("read outside the prefix", "transcode", "SubmitTranscode",
                    transcode_pb2.TranscodeRequest(inputs=[f"s3://{BUCKET}/private/"], output=f"{WORK}/t4"))
        a.at_submit("write to a new bucket", "transcode", "SubmitTranscode",
                    transcode_pb2.TranscodeRequest(inputs=[ctx["good"]], output="s3://attacker-bucket/out"))
        a.at_submit("workers = 2^31-1", "transcode", "SubmitTranscode",
                    transcode_pb2.TranscodeRequest(inputs=[ctx["good"]], output=f"{WORK}/t5", workers=2**31 - 1))
        a.at_submit("a 5 MB request", "transcode", "SubmitTranscode",
                    transcode_pb2.TranscodeRequest(inputs=[f"{WORK}/{'x' * 1000}{i}.mp4" for i in range(5000)],
                                                   output=f"{WORK}/t0"))
        a.at_submit("quality ingest of a local listing", "quality", "SubmitIngest",
                    quality_pb2.IngestRequest(source=str(canary / "secret.txt")))

        admin.write_text(f"{WORK}/in/list.txt", "\n".join([local_clip, str(canary / "dir"), str(canary / "secret.txt"),
                                                           f"s3://{BUCKET}/private/secret.txt"]) + "\n")

        def report_refusals(done):
            rows = admin.read_jsonl(done["result"]["report"])
            return sum(r["status"] == "failed" and ("s3://" in r["reason"] or "prefix" in r["reason"])
                       for r in rows), len(rows)

        a.per_item("transcode manifest naming local files, a dir, a secret", "transcode", "SubmitTranscode",
                   transcode_pb2.TranscodeRequest(inputs=[f"{WORK}/in/list.txt"], output=f"{WORK}/t6"),
                   report_refusals, f"{WORK}/t6")

        def bomb_refusals(done):
            rows = admin.read_jsonl(done["result"]["report"])
            return sum("VIDTUNE_MAX_PIXELS" in r["reason"] for r in rows), len(rows)

        a.per_item(f"PNG bomb ({ctx['bomb_kb']} KB -> 432 MB decoded)", "transcode", "SubmitTranscode",
                   transcode_pb2.TranscodeRequest(inputs=[f"{WORK}/in/bomb.png"], output=f"{WORK}/t7"),
                   bomb_refusals, f"{WORK}/t7")

        a.at_submit("generate 4096x4096, 1000 steps", "evaluate", "SubmitGenerate",
                    evaluate_pb2.GenerateRequest(prompts=f"{WORK}/p.jsonl", checkpoints=["base"], output=f"{WORK}/e1",
                                                 height=4096, width=4096, steps=1000))
        a.at_submit("generate with local weights", "evaluate", "SubmitGenerate",
                    evaluate_pb2.GenerateRequest(prompts=f"{WORK}/p.jsonl", checkpoints=["base"], output=f"{WORK}/e2",
                                                 weights=str(canary / "weights")))
        admin.write_jsonl(f"{WORK}/p.jsonl", [{"id": "x", "prompt": "a", "image": str(canary / "frame.png")}])

        def generation_refusals(done):
            summary = json.loads(admin.read_text(f"{WORK}/e3/generation.json"))
            return sum("s3://" in f["error"] for f in summary["failed"]), summary["total"]

        a.per_item("prompt set naming a local first frame", "evaluate", "SubmitGenerate",
                   evaluate_pb2.GenerateRequest(prompts=f"{WORK}/p.jsonl", checkpoints=["base"], output=f"{WORK}/e3",
                                                seeds=[0], num_frames=5, steps=1),
                   generation_refusals, f"{WORK}/e3")
        if not skip_train:
            a.at_submit("training config with local weights", "train", "SubmitTrain",
                        train_pb2.TrainRequest(preset="cpu-tiny", config_yaml=f"weights: {canary / 'weights'}\n",
                                               dataset=f"{WORK}/ds", output=f"{WORK}/r1"))
            admin.write_text(f"{WORK}/ds/metadata.csv", f"video,prompt\nclip0.mp4,a\n{local_clip},b\n")

            def train_refusals(done):
                rows = [r for u in admin.list(f"{WORK}/r2/") if "rejected-" in u for r in admin.read_jsonl(u)]
                return sum(r["id"] == local_clip and "s3://" in r["reason"] for r in rows), 1

            a.per_item("metadata.csv row naming a local video", "train", "SubmitTrain",
                       train_pb2.TrainRequest(preset="cpu-tiny", dataset=f"{WORK}/ds", output=f"{WORK}/r2",
                                              max_steps=1), train_refusals, f"{WORK}/r2")

        from vidtune.platform.client import ServiceClient
        from vidtune.platform.errors import FailedPrecondition

        try:
            ServiceClient("transcode", "10.255.255.1:50051", state["token"], tls=False).close()
            a.rows.append(("token in clear to a remote host", "NO: client connected", 0))
        except FailedPrecondition as e:
            a.rows.append(("token in clear to a remote host", f"yes: client refuses ({_short(str(e))[:60]})", 0))
    finally:
        stack.down(home)
        shutil.rmtree(home, ignore_errors=True)
    return print_table(a.rows)


def print_table(rows) -> int:
    width = max(len(r[0]) for r in rows)
    print(f"\nattacker with a token ({len(rows)} attempts)\n")
    print(f"{'attempt':<{width}}  {'bytes leaked':>12}  refused")
    print(f"{'-' * width}  {'-' * 12}  {'-' * 60}")
    for attempt, refused, leaked in rows:
        print(f"{attempt:<{width}}  {leaked:>12}  {refused}")
    bad = [r for r in rows if not r[1].startswith("yes") or r[2]]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} refused, {sum(r[2] for r in rows)} bytes leaked")
    return 1 if bad else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-port", type=int, default=int(os.environ.get("VIDTUNE_BASE_PORT", "52300")))
    parser.add_argument("--skip-train", action="store_true", help="leave out the train service (saves a minute)")
    args = parser.parse_args()
    sys.exit(run(args.base_port, args.skip_train))
