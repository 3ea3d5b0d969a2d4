"""The gRPC server under the loads a cluster brings: many open streams, clients that vanish, bad values."""
from __future__ import annotations

import math
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vidtune.platform.jobs import JobManager
from vidtune.platform.server import JobServicer, ServiceDefinition
from vidtune.v1 import jobs_pb2, jobs_pb2_grpc, transcode_pb2, transcode_pb2_grpc

AUTH = (("authorization", "Bearer test-token"),)


@pytest.fixture
def blocked_job(serve, storage, jobs_root):
    """A service whose one job runs until the test lets it go."""
    release = threading.Event()

    def wait(ctx):
        while not release.wait(0.1):
            ctx.check_cancelled()
        return {}

    manager = JobManager("transcode", storage, jobs_root, {"t.wait": wait}, scan_interval=0.5)
    server, endpoint = serve(ServiceDefinition("transcode", [], [], manager=manager))
    job = manager.submit("t.wait", {})
    yield server, endpoint, job["id"]
    release.set()


class OpenWatches:
    """`n` WatchJob streams held open over a few channels, each having received the job once."""

    def __init__(self, endpoint: str, job_id: str, n: int, channels: int = 10):
        self.channels = [grpc.insecure_channel(endpoint) for _ in range(channels)]
        self.calls = [jobs_pb2_grpc.JobServiceStub(self.channels[i % channels]).WatchJob(
            jobs_pb2.WatchJobRequest(id=job_id), metadata=AUTH) for i in range(n)]
        self.firsts = [next(c) for c in self.calls]

    def close(self) -> None:
        for c in self.calls:
            c.cancel()
        for ch in self.channels:
            ch.close()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@pytest.fixture
def many_streams_allowed(monkeypatch):
    monkeypatch.setenv("VIDTUNE_MAX_STREAMS_PER_PEER", "2000")


def test_health_and_calls_answer_within_a_second_with_1000_open_streams(many_streams_allowed, blocked_job):
    server, endpoint, job_id = blocked_job
    watches = OpenWatches(endpoint, job_id, 1000)
    try:
        assert len(watches.firsts) == 1000 and all(f.id == job_id for f in watches.firsts)
        with grpc.insecure_channel(endpoint) as ch:
            health = [_timed(lambda: health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="vidtune.v1.JobService"), timeout=5)) for _ in range(10)]
            get = [_timed(lambda: jobs_pb2_grpc.JobServiceStub(ch).GetJob(
                jobs_pb2.GetJobRequest(id=job_id), metadata=AUTH, timeout=5)) for _ in range(10)]
    finally:
        watches.close()
    assert max(health) < 1.0 and max(get) < 1.0, (health, get)


def test_a_client_gets_resource_exhausted_past_its_stream_limit(serve, storage, jobs_root, monkeypatch):
    monkeypatch.setenv("VIDTUNE_MAX_STREAMS_PER_PEER", "5")
    release = threading.Event()
    manager = JobManager("transcode", storage, jobs_root, {"t.wait": lambda ctx: release.wait(30) and {}})
    _, endpoint = serve(ServiceDefinition("transcode", [], [], manager=manager))
    job_id = manager.submit("t.wait", {})["id"]

    watches = OpenWatches(endpoint, job_id, 5, channels=1)
    try:
        extra = jobs_pb2_grpc.JobServiceStub(watches.channels[0]).WatchJob(jobs_pb2.WatchJobRequest(id=job_id),
                                                                          metadata=AUTH)
        with pytest.raises(grpc.RpcError) as e:
            next(extra)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 5 per client" in e.value.details()
    finally:
        watches.close()
        release.set()


def test_a_watch_ends_when_its_client_goes_away(blocked_job):
    server, endpoint, job_id = blocked_job

    OpenWatches(endpoint, job_id, 20, channels=2).close()
    watchers = _job_servicer(server)._changed
    deadline = time.monotonic() + 5
    while watchers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not watchers, "server-side watches outlived their clients"


def _job_servicer(server) -> JobServicer:
    # The JobServicer the server built over its manager: found through the manager's change listeners.
    return next(fn.__self__ for fn in server.definition.manager._listeners if isinstance(fn.__self__, JobServicer))


@pytest.mark.parametrize("request_", [
    jobs_pb2.ListJobsRequest(state=99),
    jobs_pb2.ListJobsRequest(page_size=-1),
])
def test_bad_enum_values_and_sizes_are_invalid_arguments(blocked_job, request_):
    _, endpoint, _ = blocked_job
    with grpc.insecure_channel(endpoint) as ch, pytest.raises(grpc.RpcError) as e:
        jobs_pb2_grpc.JobServiceStub(ch).ListJobs(request_, metadata=AUTH, timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_requests_aimed_at_job_records_or_with_bad_numbers_are_refused(serve, storage, jobs_root, bucket):
    from vidtune.transcode.service import definition

    _, endpoint = serve(definition(storage))
    bad = [
        transcode_pb2.TranscodeRequest(inputs=[f"{bucket}/in/"], output=f"{bucket}/out/",
                                       report=f"{jobs_root}/transcode/tc-20260101-000000-abcdef.json"),
        transcode_pb2.TranscodeRequest(inputs=[f"{bucket}/in/"], output=f"{jobs_root}/../jobs/transcode/"),
        transcode_pb2.TranscodeRequest(inputs=[f"{bucket}/in/"], output=f"{bucket}/out/", fps=math.nan),
        transcode_pb2.TranscodeRequest(inputs=[f"{bucket}/in/"], output=f"{bucket}/out/", max_duration=math.inf),
    ]
    with grpc.insecure_channel(endpoint) as ch:
        for request in bad:
            with pytest.raises(grpc.RpcError) as e:
                transcode_pb2_grpc.TranscodeServiceStub(ch).SubmitTranscode(request, metadata=AUTH, timeout=5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
            assert any(w in e.value.details() for w in ("job records' prefix", "not a finite number", "'..' segment"))


def test_a_config_with_a_yaml_tag_is_an_invalid_argument(serve, storage, jobs_root, bucket):
    from vidtune.train.service import definition
    from vidtune.v1 import train_pb2, train_pb2_grpc

    _, endpoint = serve(definition(storage))
    request = train_pb2.TrainRequest(preset="cpu-tiny", dataset=f"{bucket}/data", output=f"{bucket}/run",
                                     config_yaml="lora_rank: !!python/object/apply:os.system ['true']")
    with grpc.insecure_channel(endpoint) as ch, pytest.raises(grpc.RpcError) as e:
        train_pb2_grpc.TrainServiceStub(ch).SubmitTrain(request, metadata=AUTH, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not valid YAML" in e.value.details()
