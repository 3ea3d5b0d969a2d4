import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from vidtune.transcode.service import definition
from vidtune.v1 import jobs_pb2, jobs_pb2_grpc, transcode_pb2, transcode_pb2_grpc

AUTH = [("authorization", "Bearer test-token")]


@pytest.fixture
def endpoint(serve, storage, jobs_root):
    _, ep = serve(definition(storage))
    return ep


def test_health_answers_serving_without_a_token(endpoint):
    with grpc.insecure_channel(endpoint) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", "vidtune.v1.TranscodeService", "vidtune.v1.JobService"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(endpoint):
    with grpc.insecure_channel(endpoint) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in resp.list_services_response.service}
    assert {"vidtune.v1.TranscodeService", "vidtune.v1.JobService", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("metadata", [[], [("authorization", "Bearer wrong")], [("authorization", "test-token")]])
def test_calls_without_the_token_are_unauthenticated(endpoint, metadata):
    with grpc.insecure_channel(endpoint) as ch:
        with pytest.raises(grpc.RpcError) as e:
            jobs_pb2_grpc.JobServiceStub(ch).ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:  # streaming calls too
            list(jobs_pb2_grpc.JobServiceStub(ch).WatchJob(jobs_pb2.WatchJobRequest(id="x"), metadata=metadata))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_bad_requests_get_clear_status_codes(endpoint, bucket):
    with grpc.insecure_channel(endpoint) as ch:
        tc = transcode_pb2_grpc.TranscodeServiceStub(ch)
        jobs = jobs_pb2_grpc.JobServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            tc.SubmitTranscode(transcode_pb2.TranscodeRequest(output=f"{bucket}/out/"), metadata=AUTH, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "inputs" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            tc.SubmitTranscode(transcode_pb2.TranscodeRequest(inputs=[f"{bucket}/in/"], output=f"{bucket}/o/",
                                                              profile="wan-9000p"), metadata=AUTH, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown profile 'wan-9000p'" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            jobs.GetJob(jobs_pb2.GetJobRequest(id="tc-20260101-000000-abcdef"), metadata=AUTH, timeout=5)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "tc-20260101-000000-abcdef" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            jobs.GetJob(jobs_pb2.GetJobRequest(id="../../etc"), metadata=AUTH, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_local_paths_are_refused_by_the_service(endpoint, monkeypatch):
    monkeypatch.delenv("VIDTUNE_ALLOW_LOCAL_PATHS", raising=False)
    with grpc.insecure_channel(endpoint) as ch:
        with pytest.raises(grpc.RpcError) as e:
            transcode_pb2_grpc.TranscodeServiceStub(ch).SubmitTranscode(
                transcode_pb2.TranscodeRequest(inputs=["/etc/"], output="s3://vidtune/out/"), metadata=AUTH, timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "/etc/" in e.value.details()


def test_token_file_is_read(tmp_path):
    from vidtune.platform.server import load_token

    (tmp_path / "token").write_text("s3cret\n")
    assert load_token({"VIDTUNE_TOKEN_FILE": str(tmp_path / "token")}) == "s3cret"
    assert load_token({}) is None


def test_every_call_is_logged_with_its_code_and_duration(endpoint, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="vidtune.server")
    with grpc.insecure_channel(endpoint) as ch:
        jobs = jobs_pb2_grpc.JobServiceStub(ch)
        with pytest.raises(grpc.RpcError):
            jobs.GetJob(jobs_pb2.GetJobRequest(id="tc-20260101-000000-abcdef"), metadata=AUTH, timeout=5)
        with pytest.raises(grpc.RpcError):
            jobs.ListJobs(jobs_pb2.ListJobsRequest(), timeout=5)
        jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=AUTH, timeout=5)
    lines = [(r.method, r.code) for r in caplog.records if hasattr(r, "method")]
    assert lines == [("/vidtune.v1.JobService/GetJob", "NOT_FOUND"), ("/vidtune.v1.JobService/ListJobs", "UNAUTHENTICATED"),
                     ("/vidtune.v1.JobService/ListJobs", "OK")]
    assert all(r.duration_ms >= 0 for r in caplog.records if hasattr(r, "duration_ms"))


def test_liveness_stays_serving_while_readiness_follows_the_server(endpoint):
    from vidtune.platform.server import LIVENESS

    with grpc.insecure_channel(endpoint) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        assert stub.Check(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
