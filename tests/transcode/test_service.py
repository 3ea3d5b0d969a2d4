"""The transcode service as users run it: a real server process, gRPC over loopback, SIGKILL and resume."""
import json
import os
import signal
import subprocess
import sys
import time

import grpc

from vidtune.platform.objectstore import free_ports
from vidtune.platform.stack import wait_serving
from vidtune.platform.storage import join
from vidtune.samples import make_clip
from vidtune.v1 import jobs_pb2, jobs_pb2_grpc, transcode_pb2, transcode_pb2_grpc

TOKEN = "kill-test-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]


def start_server(port, env, log):
    proc = subprocess.Popen([sys.executable, "-m", "vidtune.cli", "serve", "transcode", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_serving(f"127.0.0.1:{port}", 60, proc, "transcode")
    return proc


def test_killed_service_resumes_and_every_output_exists_once(storage, bucket, jobs_root, s3_env, tmp_path):
    n = 8
    for i in range(n):
        storage.upload(make_clip(tmp_path / f"c{i}.mp4", 1280, 720, 4.0), join(bucket, f"in/c{i}.mp4"))
    storage.write_text(join(bucket, "in/zz-broken.mp4"), "garbage")
    env = {**os.environ, **s3_env, "VIDTUNE_JOBS_ROOT": jobs_root, "VIDTUNE_TOKEN": TOKEN}
    port = free_ports(1)[0]
    log = open(tmp_path / "server.log", "ab")
    proc = start_server(port, env, log)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            job = transcode_pb2_grpc.TranscodeServiceStub(ch).SubmitTranscode(transcode_pb2.TranscodeRequest(
                inputs=[join(bucket, "in/")], output=join(bucket, "out"), profile="wan-720p", workers=1),
                metadata=AUTH, timeout=10)
            jobs = jobs_pb2_grpc.JobServiceStub(ch)
            deadline = time.monotonic() + 120
            while True:  # kill it in the middle of the batch
                rec = jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id), metadata=AUTH, timeout=5)
                if 2 <= rec.progress.done < n - 2:
                    break
                assert rec.state in (jobs_pb2.QUEUED, jobs_pb2.RUNNING) and time.monotonic() < deadline
                time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        done_before_kill = rec.progress.done
        proc = start_server(port, env, log)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            updates = list(jobs_pb2_grpc.JobServiceStub(ch).WatchJob(jobs_pb2.WatchJobRequest(id=job.id),
                                                                       metadata=AUTH, timeout=180))
        final = updates[-1]
        assert final.state == jobs_pb2.SUCCEEDED, final.error.message
        assert final.attempt == 2 and final.result["ok"] == n and final.result["failed"] == 1
        assert final.result["skipped"] >= done_before_kill - 1   # work done before the kill was not redone
        assert any(0 < u.progress.percent < 100 for u in updates) or len(updates) >= 2
        outputs = [u for u in storage.list(join(bucket, "out/")) if u.endswith(".mp4")]
        assert len(outputs) == n == len(set(outputs))            # exactly once each
        stems = sorted(u.rsplit("/", 1)[-1].split(".")[0] for u in outputs)
        assert stems == [f"c{i}" for i in range(n)]
        report = [json.loads(ln) for ln in storage.read_text(final.result["report"]).splitlines()]
        assert len(report) == n + 1 and report[-1]["status"] == "failed" and "zz-broken.mp4" in report[-1]["reason"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
        log.close()


def test_sigterm_stops_the_server_gracefully(s3_env, jobs_root, tmp_path):
    port = free_ports(1)[0]
    env = {**os.environ, **s3_env, "VIDTUNE_JOBS_ROOT": jobs_root}
    with open(tmp_path / "log", "ab") as log:
        proc = start_server(port, env, log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert "stopped" in (tmp_path / "log").read_text()
