"""QualityService over real gRPC on loopback, with jobs persisted in a real S3 store."""
from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import json_format

from vidtune.quality.service import definition
from vidtune.v1 import jobs_pb2, jobs_pb2_grpc, quality_pb2, quality_pb2_grpc

AUTH = [("authorization", "Bearer test-token")]


def wait(channel, job) -> dict:
    final = list(jobs_pb2_grpc.JobServiceStub(channel).WatchJob(jobs_pb2.WatchJobRequest(id=job.id), metadata=AUTH,
                                                                timeout=120))[-1]
    assert final.state == jobs_pb2.SUCCEEDED, final.error.message
    return json_format.MessageToDict(final.result)


@pytest.fixture
def s3_archive(storage, bucket, archive) -> str:
    root = f"{bucket}/archive"
    for p in sorted((archive / "media").iterdir()):
        storage.upload(p, f"{root}/media/{p.name}")
    storage.upload(archive / "list.csv", f"{root}/list.csv")
    return root


def test_every_step_as_a_job(serve, storage, jobs_root, s3_archive, bucket):
    server, address = serve(definition(storage))
    with grpc.insecure_channel(address) as ch:
        q = quality_pb2_grpc.QualityServiceStub(ch)
        store = f"{bucket}/store"
        ing = wait(ch, q.SubmitIngest(quality_pb2.IngestRequest(source=f"{s3_archive}/list.csv", store=store),
                                      metadata=AUTH, timeout=10))
        assert ing["rows"] == 11 and ing["ingest_errors"] == {"bad path": 1}
        pr = wait(ch, q.SubmitProbe(quality_pb2.ProbeRequest(store=store, version=ing["version"], workers=2),
                                    metadata=AUTH, timeout=10))
        assert pr["undecodable"] == 3 and pr["probed"] == 9  # missing.mp4 is not probed, only reported
        rules = ("rules:\n  - {name: readable, type: probe_ok}\n"
                 "  - {name: dup, type: duplicate, field: sha256}\n")
        flt = wait(ch, q.SubmitFilter(quality_pb2.FilterRequest(store=store, version=pr["version"], rules_yaml=rules),
                                      metadata=AUTH, timeout=10))
        assert flt["rows_in"] == 11 == flt["clean"] + flt["rejected"] and flt["clean"] == 6
        assert storage.exists(flt["report_html"])
        sp = wait(ch, q.SubmitSplit(quality_pb2.SplitRequest(store=store, version=flt["clean_version"],
                                                             val_ratio=0.34, seed=3), metadata=AUTH, timeout=10))
        assert sum(sp["splits"].values()) == 6 and sp["splits"]["val"] >= 1
        sub = wait(ch, q.SubmitSubset(quality_pb2.SubsetRequest(store=store, version=sp["version"], size=4,
                                                                proportions={"역사/사회": 0.5}),
                                      metadata=AUTH, timeout=10))
        assert sub["rows"] == 4 and sub["targets"]["역사/사회"] == 2
        st = wait(ch, q.SubmitStats(quality_pb2.StatsRequest(store=store, version=sub["version"],
                                                             output=f"{bucket}/stats", content_sample=10),
                                    metadata=AUTH, timeout=10))
        assert "Gini" in storage.read_text(st["markdown"])
        ex = wait(ch, q.SubmitExport(quality_pb2.ExportRequest(store=store, version=sub["version"],
                                                               output=f"{bucket}/export"), metadata=AUTH, timeout=10))
        assert ex["rows"] == 4 and ex["copied"] == 4
        first = storage.read_text(f"{bucket}/export/metadata.csv").splitlines()[1].split(",")[0]
        assert storage.exists(f"{bucket}/export/{first}")


def test_run_job_and_request_validation(serve, storage, jobs_root, s3_archive, bucket):
    server, address = serve(definition(storage))
    with grpc.insecure_channel(address) as ch:
        q = quality_pb2_grpc.QualityServiceStub(ch)
        job = q.SubmitRun(quality_pb2.RunQualityRequest(source=f"{s3_archive}/list.csv", output=f"{bucket}/run",
                                                        skip_export=True), metadata=AUTH, timeout=10)
        final = list(jobs_pb2_grpc.JobServiceStub(ch).WatchJob(jobs_pb2.WatchJobRequest(id=job.id), metadata=AUTH,
                                                               timeout=120))[-1]
        # default rules: tiny clips all go; a run that keeps nothing FAILED, with its reports written
        assert final.state == jobs_pb2.FAILED and "every row was rejected (11 of 11)" in final.error.message
        res = json_format.MessageToDict(final.result)
        assert res["rows_in"] == 11 == res["clean"] + res["rejected"]
        assert storage.exists(f"{bucket}/run/rejected.parquet") and storage.exists(f"{bucket}/run/report.json")
        for call, request, text in [
            (q.SubmitProbe, quality_pb2.ProbeRequest(store=f"{bucket}/s"), "version: required"),
            (q.SubmitRun, quality_pb2.RunQualityRequest(source="/etc/list.csv", output=f"{bucket}/o"), "s3://"),
            (q.SubmitFilter, quality_pb2.FilterRequest(store=f"{bucket}/s", version="v", rules_yaml="rules: 3"),
             "expected `rules:`"),
            (q.SubmitSubset, quality_pb2.SubsetRequest(store=f"{bucket}/s", version="v", size=3,
                                                       proportions={"a": 0.8, "b": 0.5}), "sum to at most 1"),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                call(request, metadata=AUTH, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            q.SubmitRun(quality_pb2.RunQualityRequest(source="s3://x/y", output="s3://x/z"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # A job whose version does not exist fails with NOT_FOUND, and the service lives on.
        job = q.SubmitProbe(quality_pb2.ProbeRequest(store=f"{bucket}/s", version="ingest-nope"), metadata=AUTH,
                            timeout=10)
        final = list(jobs_pb2_grpc.JobServiceStub(ch).WatchJob(jobs_pb2.WatchJobRequest(id=job.id), metadata=AUTH,
                                                               timeout=60))[-1]
        assert final.state == jobs_pb2.FAILED and final.error.code == grpc.StatusCode.NOT_FOUND.value[0]
        assert "ingest-nope" in final.error.message


def test_cli_submit_runs_the_same_step_as_a_job(serve, storage, jobs_root, s3_archive, bucket, capsys):
    from vidtune.cli import main

    server, address = serve(definition(storage))
    code = main(["quality", "ingest", "--source", f"{s3_archive}/list.csv", "--store", f"{bucket}/store",
                 "--submit", "--endpoint", address, "--token", "test-token", "--watch"])
    assert code == 0
    job = json.loads(capsys.readouterr().out)
    assert job["state"] == "SUCCEEDED" and job["kind"] == "quality.ingest" and job["result"]["rows"] == 11
    assert storage.exists(job["result"]["manifest"])
