"""`pipeline run --backend kubernetes`: the stage Jobs it creates, rendered without a cluster (--dry-run) and
checked against the official schemas. Creating and following them is in test_fanout.py (a stand-in API server)."""
import yaml
from deploy_support import KUBE_VERSIONS, schema_errors

from vidtune.cli import main
from vidtune.pipeline import runner, stages
from vidtune.platform.jobs import new_record
from vidtune.platform.kube import ClusterSettings, manifest


def test_dry_run_prints_every_stage_job_in_order_valid_for_every_supported_kubernetes(storage, bucket, tmp_path,
                                                                                       capsys):
    config = tmp_path / "p.yaml"
    config.write_text(stages.render_yaml(f"{bucket}/archive/labels/", f"{bucket}/archive", f"{bucket}/work"))
    assert main(["pipeline", "run", "--config", str(config), "--backend", "kubernetes", "--dry-run"]) == 0
    out = capsys.readouterr().out
    jobs = [d for d in yaml.safe_load_all(out) if d]
    # Per-item stages are Indexed Jobs (shards: 4 by default); quality's own run merges its probe shards.
    assert [(j["metadata"]["labels"]["vidtune.io/pipeline-stage"], j["spec"].get("completionMode")) for j in jobs] == [
        ("transcode", "Indexed"), ("quality", "Indexed"), ("quality", None), ("export", None), ("train", None),
        ("generate", "Indexed"), ("score", None), ("compare", None)]
    for job in jobs:
        for version in KUBE_VERSIONS:
            assert schema_errors(job, version) == [], (job["metadata"]["name"], version)
    transcode, generate = jobs[0], jobs[5]
    assert (transcode["spec"]["completions"], transcode["spec"]["parallelism"]) == (4, 4)
    assert transcode["spec"]["backoffLimitPerIndex"] == ClusterSettings().backoff_limit
    container = transcode["spec"]["template"]["spec"]["containers"][0]
    command = container["command"] + container["args"]
    assert command[:4] == ["vidtune", "worker", "--service", "transcode"]
    assert command[command.index("--spec") + 1] == f"{bucket}/work/transcode/_shards/$(JOB_COMPLETION_INDEX).json"
    assert command[command.index("--job-id") + 1].endswith("-$(JOB_COMPLETION_INDEX)")
    # the index is declared in the container's env, so the kubelet expands it in the arguments
    index_env = next(e for e in container["env"] if e["name"] == "JOB_COMPLETION_INDEX")
    assert "job-completion-index" in index_env["valueFrom"]["fieldRef"]["fieldPath"]
    assert "nvidia.com/gpu" not in str(container.get("resources"))
    # generation: one GPU per pod, on the GPU nodes
    pod = generate["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == ClusterSettings().node_selector
    # export's manifest version is known only once quality has run: a placeholder says where it comes from
    assert f"<the quality run's final manifest version: versions.final in {bucket}/work/quality/report.json>" in out
    assert "export and later" not in out


def test_one_shard_is_one_plain_job(storage, bucket, tmp_path, capsys):
    doc = yaml.safe_load(stages.render_yaml(f"{bucket}/a/labels/", f"{bucket}/a", f"{bucket}/work"))
    doc["stages"]["transcode"]["shards"] = 1
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(doc))
    assert main(["pipeline", "run", "--config", str(config), "--backend", "kubernetes", "--dry-run", "--until",
                 "transcode"]) == 0
    jobs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert len(jobs) == 1 and "completionMode" not in jobs[0]["spec"]
    doc["stages"]["quality"]["probe"] = False  # nothing per item to spread: quality.run alone
    config.write_text(yaml.safe_dump(doc))
    assert main(["pipeline", "run", "--config", str(config), "--backend", "kubernetes", "--dry-run", "--until",
                 "quality"]) == 0
    jobs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [j["spec"].get("completionMode") for j in jobs] == [None, None]
    doc["stages"]["transcode"]["shards"] = 0
    config.write_text(yaml.safe_dump(doc))
    assert main(["pipeline", "run", "--config", str(config), "--backend", "kubernetes", "--dry-run"]) == 2
    assert "stages.transcode.shards: expected 1 to 1000, got 0" in capsys.readouterr().err


def test_stages_are_placed_by_their_kinds():
    """GPUs come from each kind's own placement, as when its service launches it: training from its
    preset's GPU count, generation one GPU (and its pipeline on it), scoring none."""
    settings = ClusterSettings()
    by_name = {s.name: s for s in stages.STAGES}

    def pod(stage: str, spec: dict) -> dict:
        record = new_record(by_name[stage].service, by_name[stage].kind, spec)
        return manifest(runner.stage_job(by_name[stage], record, f"s3://b/w/{stage}/_spec.json",
                                         settings))["spec"]["template"]["spec"]

    train = pod("train", {"preset": "v100-2gpu-ti2v-5b-480x832x49", "config": {"weights": "s3://m/Wan2.2-TI2V-5B"},
                          "dataset": "s3://b/w/export",
                          "output": "s3://b/w/train"})
    assert train["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert train["nodeSelector"] == settings.node_selector
    cpu_train = pod("train", {"preset": "cpu-tiny", "config": {}, "dataset": "s3://b/w/export", "output": "s3://b/w/t"})
    assert "nvidia.com/gpu" not in str(cpu_train["containers"][0].get("resources"))
    generate = by_name["generate"].on_cluster({"prompts": "s3://b/p.jsonl"})
    assert generate["device"] == "cuda"
    assert pod("generate", generate)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in str(pod("score", {})["containers"][0].get("resources"))



def test_every_local_location_is_refused_before_anything_runs(tmp_path, capsys):
    """Pods read only the store: a local path anywhere in the file fails the run at once, naming each one
    (not hours later, when the stage that reads it starts)."""
    doc = yaml.safe_load(stages.render_yaml("s3://b/labels/", "/archive", "s3://b/work"))
    doc["stages"]["quality"]["rules"] = "rules.yaml"
    doc["stages"]["generate"]["prompts"] = "s3://b/prompts.jsonl"
    doc["stages"]["train"]["config"] = {"weights": {"dit": ["/models/dit", "s3://m/dit2"], "vae": "s3://m/vae"},
                                        "sample_prompts": "sp.jsonl"}
    doc["stages"]["score"]["tiny_metric_models"] = True
    doc["stages"]["score"]["i3d"] = "/models/i3d.pt"  # not used with tiny metric models: not named
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(doc))
    for extra in ([], ["--dry-run"]):
        assert main(["pipeline", "run", "--config", str(config), "--backend", "kubernetes", *extra]) == 2
        err = capsys.readouterr().err
        assert "these are local: media_root '/archive', quality.rules 'rules.yaml', " \
               "train.config.weights '/models/dit', train.config.sample_prompts 'sp.jsonl'" in err, err
    assert not (tmp_path / "work").exists()


def test_dry_run_renders_without_a_store(tmp_path, capsys, monkeypatch):
    """Rendering needs no store: with none answering, every stage is shown as not run, and said so."""
    monkeypatch.setenv("VIDTUNE_S3_ENDPOINT", "127.0.0.1:9")  # nothing listens there
    config = tmp_path / "p.yaml"
    config.write_text(stages.render_yaml("s3://vidtune/labels/", "s3://vidtune/archive", "s3://vidtune/work"))
    assert main(["pipeline", "run", "--config", str(config), "--backend", "kubernetes", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert len([d for d in yaml.safe_load_all(out) if d]) == 8
    assert "unreachable" in out and "every stage is shown as not run yet" in out


def test_a_multi_node_training_config_is_refused_when_the_file_is_read(tmp_path, capsys):
    doc = yaml.safe_load(stages.render_yaml("s3://vidtune/labels/", "s3://vidtune/archive", "s3://vidtune/work"))
    doc["stages"]["train"]["config"] = {"num_nodes": 2}
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(doc))
    assert main(["pipeline", "run", "--config", str(config), "--backend", "kubernetes", "--dry-run"]) == 2
    assert "stages.train.config.num_nodes: a pipeline trains on one node, got 2" in capsys.readouterr().err
