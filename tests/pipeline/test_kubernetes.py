"""`pipeline run --backend kubernetes`: the stage Jobs it creates, rendered without a cluster (--dry-run).

Creating and following them needs a cluster, which the test machine does not have."""
import yaml

from vidtune.cli import main
from vidtune.pipeline import runner, stages
from vidtune.platform.jobs import new_record
from vidtune.platform.kube import ClusterSettings, manifest


def test_dry_run_prints_the_stage_jobs_in_order(storage, bucket, tmp_path, capsys):
    config = tmp_path / "p.yaml"
    config.write_text(stages.render_yaml(f"{bucket}/archive/labels/", f"{bucket}/archive", f"{bucket}/work"))
    assert main(["pipeline", "run", "--config", str(config), "--backend", "kubernetes", "--dry-run"]) == 0
    out = capsys.readouterr().out
    jobs = [d for d in yaml.safe_load_all(out) if d]
    # transcode and quality are known up front; export needs the quality run's manifest version
    assert [j["metadata"]["labels"]["vidtune.io/pipeline-stage"] for j in jobs] == ["transcode", "quality"]
    assert "# export and later: their specs need the result of an earlier stage" in out
    container = jobs[0]["spec"]["template"]["spec"]["containers"][0]
    command = container["command"] + container.get("args", [])
    assert command[:3] == ["vidtune", "worker", "--service"] and command[3] == "transcode"
    assert command[command.index("--spec") + 1] == f"{bucket}/work/transcode/_spec.json"
    assert command[command.index("--kind") + 1] == "transcode.batch"
    for job in jobs:  # CPU stages ask for no GPU
        assert "nvidia.com/gpu" not in str(job["spec"]["template"]["spec"]["containers"][0].get("resources"))


def test_gpu_stages_are_placed_on_gpu_nodes_and_local_work_is_refused(tmp_path, capsys):
    settings = ClusterSettings()
    train = next(s for s in stages.STAGES if s.name == "train")
    job = manifest(runner.stage_job(train, new_record("train", "train.run", {}), "s3://b/w/train/_spec.json", settings))
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == str(settings.gpus)
    assert pod["nodeSelector"] == settings.node_selector
    config = tmp_path / "p.yaml"
    config.write_text(stages.render_yaml("labels/", "archive", str(tmp_path / "work")))
    assert main(["pipeline", "run", "--config", str(config), "--backend", "kubernetes"]) == 2
    assert "is not an s3:// URI" in capsys.readouterr().err
