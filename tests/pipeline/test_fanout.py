"""`pipeline run --backend kubernetes` end to end, every pod a real `vidtune worker` process.

The API server is the stand-in in kubelet.py; everything else is real: the Jobs the runner builds (Indexed
Jobs for transcode and quality), their pods' commands and environment, the object store, ffmpeg, probing.
A shard is killed mid-work and retried, and the merged outputs equal those of an in-process run.
"""
import hashlib
import io
import json

import pyarrow.parquet as pq
import pytest
import yaml
from kubelet import LocalCluster
from pipeline_testlib import RULES, make_tiny_archive

from vidtune.cli import main
from vidtune.pipeline import runner, stages
from vidtune.samples import make_clip
from vidtune.platform import kube
from vidtune.platform.jobs import JobStore
from vidtune.transcode.batch import list_inputs, meta_uri, output_uri, shard_items
from vidtune.transcode.profiles import get_profile

SHARDS = 2


def config_file(tmp_path, bucket: str, **stage_settings) -> str:
    doc = yaml.safe_load(stages.render_yaml(f"{bucket}/archive/labels/", f"{bucket}/archive", f"{bucket}/work"))
    doc["stages"]["quality"]["rules"] = f"{bucket}/rules.yaml"
    doc["stages"]["transcode"]["profile"] = "wan-480p"
    for stage, values in stage_settings.items():
        doc["stages"][stage].update(values)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return str(path)


@pytest.fixture
def archive(storage, bucket, tmp_path):
    local = make_tiny_archive(tmp_path / "archive")
    for f in sorted(local.rglob("*")):
        if f.is_file():
            storage.upload(f, f"{bucket}/archive/{f.relative_to(local).as_posix()}")
    # A clip without a label: transcoded, never ingested. It makes shard 1 of 2 [portrait, wide, odd], so its
    # pod has work left when it is killed after the first (the inputs are taken in sorted order).
    make_clip(tmp_path / "slow.mp4", 640, 360, 1.0, fps=8)
    storage.upload(tmp_path / "slow.mp4", f"{bucket}/archive/media/culture/slow.mp4")
    storage.write_text(f"{bucket}/rules.yaml", RULES)
    return f"{bucket}/archive"


@pytest.fixture
def cluster(storage, bucket, jobs_root, object_store, tmp_path, monkeypatch):
    env = {"VIDTUNE_S3_ENDPOINT": f"http://{object_store.endpoint}", "VIDTUNE_JOBS_ROOT": jobs_root,
           "VIDTUNE_LEASE_SECONDS": "2", "VIDTUNE_CACHE_DIR": kube.CACHE_DIR, "NO_PROXY": "127.0.0.1,localhost"}
    c = LocalCluster(tmp_path / "node", config_maps={"vidtune-env": env},
                     secrets={"vidtune-s3": {"access-key": object_store.access_key,
                                             "secret-key": object_store.secret_key}})
    monkeypatch.setattr(kube, "batch_api", lambda: c)
    monkeypatch.setattr(runner.OnKubernetes, "POLL_SECONDS", 0.2)
    yield c
    c.wait_idle()


def snapshot(storage, work: str) -> dict:
    """What a run leaves for the stages after it: clips, report lines, manifests, the export."""
    def keys(prefix, skip=()):  # the runner's own files (_stage.json, _spec.json, _shards/) aside
        return sorted(u[len(work):] for u in storage.list(f"{work}/{prefix}/")
                      if not any(s in u for s in skip + ("/_shards/", "/_stage.json", "/_spec.json")))

    def rows(name):  # as JSON: NaN equals NaN there
        table = pq.read_table(io.BytesIO(storage.read_bytes(f"{work}/quality/{name}")))
        return json.dumps(table.to_pylist(), sort_keys=True, default=str)

    export = {k: storage.read_text(work + k) for k in keys("export") if k.endswith((".csv", ".jsonl"))}
    return {
        "clips": keys("transcode", ("report.jsonl",)),
        "report": [(r["input"], r["status"], r["output"], r["reason"], r["width"], r["height"])
                   for r in storage.read_jsonl(f"{work}/transcode/report.jsonl")],
        "manifests": keys("quality/manifests", ("probe-cache",)),
        "clean": rows("clean.parquet"), "rejected": rows("rejected.parquet"),
        "export": export,
        "exported_media": {k: hashlib.sha256(storage.read_bytes(work + k)).hexdigest() for k in keys("export")
                           if k.endswith((".mp4", ".png"))},
    }


def test_sharded_kubernetes_run_equals_the_in_process_run(storage, bucket, archive, cluster, tmp_path, capsys):
    # One input at a time per pod, so a pod killed after its first input has the others still to do.
    config = config_file(tmp_path, bucket, transcode={"shards": SHARDS, "workers": 1}, quality={"shards": SHARDS})
    work = f"{bucket}/work"

    # The reference: every stage in this process, unsharded.
    assert main(["pipeline", "run", "--config", config, "--until", "export", "--quiet"]) == 0
    expected = snapshot(storage, work)
    assert expected["report"] and expected["export"]
    for uri in list(storage.list(f"{work}/")):
        storage.delete(uri)

    # Shard 1 of the transcode is killed once its first input is done (as a lost node would kill it).
    profile = get_profile("wan-480p")
    first = shard_items(list_inputs(storage, [archive]), 1, SHARDS)[0]
    done_meta = meta_uri(f"{work}/transcode", output_uri(first, f"{work}/transcode", profile))
    cluster.kill_when = lambda job, index, attempt: (
        (lambda: storage.exists(done_meta))
        if job.metadata.labels.get("vidtune.io/pipeline-stage") == "transcode" and index == 1 and attempt == 0
        else None)

    capsys.readouterr()
    code = main(["pipeline", "run", "--config", config, "--until", "export", "--backend", "kubernetes", "--quiet"])
    out = capsys.readouterr()
    logs = "\n".join(f"{p.job}[{p.index}#{p.attempt}] -> {p.exit_code}\n{cluster.log_of(p)[-2000:]}" for p in cluster.pods)
    assert code == 0, out.err + logs

    # Same clips, same report lines, same manifest versions, same rows, byte-identical export files.
    got = snapshot(storage, work)
    for key in expected:
        assert got[key] == expected[key], key


    # The Jobs, in order: transcode and quality probe as Indexed Jobs, then the quality merge, then export.
    jobs = list(cluster.jobs.values())
    assert [(j.metadata.labels["vidtune.io/pipeline-stage"], j.spec.completion_mode, j.spec.completions)
            for j in jobs] == [("transcode", "Indexed", SHARDS), ("quality", "Indexed", SHARDS),
                               ("quality", None, None), ("export", None, None)]
    killed = [p for p in cluster.pods if p.killed]
    assert [(p.index, p.attempt) for p in killed] == [(1, 0)]
    retried = next(p for p in cluster.pods if p.job == killed[0].job and p.index == 1 and p.attempt == 1)
    assert retried.exit_code == 0 and retried.env["JOB_COMPLETION_INDEX"] == "1"

    # The retried shard skipped the input its killed pod had finished.
    transcode = runner.load_status(storage, stages.parse(open(config).read()), "transcode")
    shard_record = JobStore(storage, f"{bucket}/jobs", "transcode").load(f"{transcode['shards_job_id']}-1")
    assert shard_record["attempt"] == 2 and shard_record["result"]["skipped"] == 1
    shard_report = storage.read_jsonl(shard_record["result"]["report"])
    assert any(r["input"] == first.input and r["skipped"] for r in shard_report)

    # Each quality shard probed its own rows; the merge job found every probe in the cache.
    quality = runner.load_status(storage, stages.parse(open(config).read()), "quality")
    qstore = JobStore(storage, f"{bucket}/jobs", "quality")
    probed = [qstore.load(f"{quality['shards_job_id']}-{i}")["result"]["probed"] for i in range(SHARDS)]
    assert all(probed) and sum(probed) == 4  # every labelled item but the damaged file (not transcoded)


def test_a_shard_that_keeps_failing_fails_the_stage_naming_it(storage, bucket, archive, cluster, tmp_path, capsys,
                                                              monkeypatch):
    # Of 3 shards, shard 1 gets the one input that is not a video: its job fails, and so does its one retry.
    monkeypatch.setenv("VIDTUNE_K8S_BACKOFF_LIMIT", "1")
    make_clip(tmp_path / "ok.mp4", 64, 64, 0.5, fps=8)
    for name in ("a.mp4", "c.mp4"):
        storage.upload(tmp_path / "ok.mp4", f"{bucket}/mixed/{name}")
    storage.write_text(f"{bucket}/mixed/b.mp4", "not a video")
    config = config_file(tmp_path, bucket, transcode={"shards": 3})
    doc = yaml.safe_load(open(config))
    doc["media_root"] = f"{bucket}/mixed"
    open(config, "w").write(yaml.safe_dump(doc))
    code = main(["pipeline", "run", "--config", config, "--until", "transcode", "--backend", "kubernetes",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "stage transcode failed: 1 of 3 shards failed (Indexed Job vidtune-tc-" in err
    assert "shard 1 of 3 (job tc-" in err and "every input failed (1 of 1)" in err and "b.mp4" in err
    assert "Kubernetes Job failed: FailedIndexes" in err
    job = next(iter(cluster.jobs.values()))
    assert job.status.failed_indexes == "1" and job.status.completed_indexes == "0,2"
    # a failed job record is final: the retried pod finds it FAILED and stops at once
    assert sorted((p.index, p.attempt, p.exit_code) for p in cluster.pods) == [(0, 0, 0), (1, 0, 1), (1, 1, 1),
                                                                               (2, 0, 0)]
    assert "is already FAILED" in cluster.log_of(next(p for p in cluster.pods if p.attempt == 1))
    assert runner.load_status(storage, stages.parse(open(config).read()), "transcode")["state"] == "FAILED"


def test_a_rerun_follows_the_running_indexed_job_instead_of_creating_another(storage, bucket, jobs_root, tmp_path):
    from kubelet import InMemoryBatchApi
    from kubernetes import client as k8s

    from vidtune.platform.jobs import new_record

    p = stages.parse(open(config_file(tmp_path, bucket, transcode={"shards": 2})).read())
    stage = stages.STAGES[0]
    spec = stage.spec(p, {})
    api = InMemoryBatchApi()
    # An earlier invocation created the Indexed Job and was interrupted; meanwhile both shards finished.
    job = runner.fanout_job(stage, p, "tc-earlier", 2, kube.ClusterSettings())
    api.create_namespaced_job("vidtune", job)
    job.status = k8s.V1JobStatus(succeeded=2, conditions=[k8s.V1JobCondition(type="Complete", status="True")])
    store = JobStore(storage, jobs_root, "transcode")
    for i in range(2):
        rec = new_record("transcode", "transcode.batch", {}) | {"id": f"tc-earlier-{i}", "state": "SUCCEEDED"}
        store.create(rec)
        storage.write_jsonl(f"{p.work}/transcode/_shards/report-0000{i}-of-00002.jsonl",
                            [{"input": f"{p.media_root}/{n}.mp4", "status": "ok", "output": f"{p.work}/transcode/{n}.mp4"}
                             for n in ("abc"[i::2])])
    digest = stages.spec_digest(spec)
    storage.write_text(runner.status_uri(p, "transcode"), json.dumps(
        {"stage": "transcode", "digest": digest, "state": "RUNNING", "shards_job_id": "tc-earlier",
         "shards_k8s_job": job.metadata.name, "shards": 2}))

    results = runner.run(p, runner.OnKubernetes(storage, p, kube.ClusterSettings(), api=api, poll_seconds=0.01),
                         storage, until="transcode", log=lambda m: None)
    assert len(api.jobs) == 1  # followed, not created again
    assert results["transcode"]["ok"] == 3
    assert [r["input"].rsplit("/", 1)[1] for r in storage.read_jsonl(f"{p.work}/transcode/report.jsonl")] == \
           ["a.mp4", "b.mp4", "c.mp4"]  # the shards' reports merged back into input order


def test_generation_fans_out_over_pods_and_merges_into_one_summary(storage, bucket, cluster, tmp_path):
    from eval_clips import write_tiny_lora

    p = stages.parse(open(config_file(tmp_path, bucket, generate={"shards": 2, "height": 32, "width": 32,
                                                                  "num_frames": 5, "steps": 2})).read())
    storage.upload(write_tiny_lora(tmp_path / "epoch-1.safetensors"), p.out("train", "checkpoints", "epoch-1.safetensors"))
    storage.write_jsonl(p.out("generate", "prompts.jsonl"), [{"id": "cat", "prompt": "고양이", "category": "a"}])
    stage = next(s for s in stages.STAGES if s.name == "generate")
    spec = stage.spec(p, {}) | {"device": "cpu"}  # this node has no GPU; a cluster's pods default to cuda
    result = runner.OnKubernetes(storage, p, kube.ClusterSettings(), poll_seconds=0.2).run(stage, spec, {}, lambda v: None)
    logs = "\n".join(cluster.log_of(pod)[-1500:] for pod in cluster.pods)
    assert result == {"videos": spec["output"], "generated": 4, "skipped": 0, "failed": 0, "total": 4,
                      "failures": []}, logs
    job = next(iter(cluster.jobs.values()))
    assert job.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert sorted(pod.index for pod in cluster.pods) == [0, 1]
    summary = json.loads(storage.read_text(f"{spec['output']}/generation.json"))
    # plan order: base seeds 0, 1, then epoch-1 seeds 0, 1; pod 0 made the 1st and 3rd, pod 1 the others
    assert [v[len(spec["output"]):].rsplit("-", 1)[0] for v in summary["videos"]] == [
        "/base/cat/seed-0", "/base/cat/seed-1", "/epoch-1/cat/seed-0", "/epoch-1/cat/seed-1"]
    assert all(storage.exists(v) for v in summary["videos"])
