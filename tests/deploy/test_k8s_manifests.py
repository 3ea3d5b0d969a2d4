"""k8s/: the kustomize base and the Job templates, as `kubectl apply` would read them."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from deploy_support import K8S, KUBE_VERSIONS, ROOT, container_env, kustomize_resources, parse_docs, pod_specs, \
    schema_errors


def base_objects():
    return kustomize_resources(K8S / "base")


def job_files():
    return sorted((K8S / "jobs").glob("*.yaml"))


def test_manifests_are_generated_from_the_chart():
    result = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_kubectl_apply_f_reads_only_manifests():
    """`kubectl apply -f k8s/base/` takes every *.yaml/*.yml/*.json in the directory: each must be a Kubernetes
    object listed in the kustomization, so both ways of applying give the same objects."""
    applied = sorted(p.name for p in (K8S / "base").iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    kustomization = yaml.safe_load((K8S / "base" / "Kustomization").read_text())
    assert applied == sorted(kustomization["resources"])
    assert not [p for p in (K8S / "jobs").iterdir() if p.suffix not in (".yaml",)]


def test_every_manifest_matches_the_kubernetes_schemas():
    objects = base_objects()
    objects += [(str(p.relative_to(ROOT)), d) for p in job_files() for d in parse_docs(p.read_text())]
    assert len(objects) >= 17
    failures = [f"{v} {path} {obj['kind']}: {e}" for v in KUBE_VERSIONS for path, obj in objects
                for e in schema_errors(obj, v)]
    assert not failures, "\n".join(failures[:20])


def test_objects_are_applicable_as_written():
    for path, obj in base_objects() + [(str(p), d) for p in job_files() for d in parse_docs(p.read_text())]:
        assert obj["metadata"].get("name"), f"{path}: `kubectl apply` needs metadata.name"
        assert "namespace" not in obj["metadata"], f"{path}: the namespace comes from `kubectl -n`"
        assert "{{" not in yaml.safe_dump(obj), f"{path}: unrendered template"
    assert not [o for _, o in base_objects() if o["kind"] == "Secret"], "credentials never live in the repository"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_same_objects():
    built = subprocess.run(["kubectl", "kustomize", str(K8S / "base")], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, parse_docs(built.stdout))) == sorted(key(o) for _, o in base_objects())


def test_indexed_transcode_job_shards_a_manifest():
    (job,) = parse_docs((K8S / "jobs" / "transcode-indexed-job.yaml").read_text())
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] >= 2
    (container,) = spec["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["transcode", "shard"]
    assert args[args.index("--shards") + 1] == str(spec["completions"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    for flag, var in (("--manifest", "VIDTUNE_MANIFEST"), ("--output", "VIDTUNE_OUTPUT"), ("--profile", "VIDTUNE_PROFILE")):
        assert args[args.index(flag) + 1] == f"$({var})" and env[var], flag
    assert env["VIDTUNE_MANIFEST"].startswith("s3://") and env["VIDTUNE_OUTPUT"].startswith("s3://")
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_training_job_runs_a_worker_on_v100():
    (job,) = parse_docs((K8S / "jobs" / "train-job.yaml").read_text())
    (pod,) = pod_specs(job)
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # The spec's preset takes two GPUs: one worker process per GPU under torchrun.
    assert container["command"] == ["torchrun"]
    assert container["args"][:4] == ["--standalone", "--nproc_per_node=2", "--no-python", "vidtune"]
    assert container["args"][4:] == ["worker", "--service", "train", "--job-id", "$(VIDTUNE_JOB_ID)",
                                     "--spec", "$(VIDTUNE_SPEC)", "--kind", "train.run"]
    assert env["VIDTUNE_JOB_ID"] == job["metadata"]["labels"]["vidtune.io/job-id"]
    assert env["VIDTUNE_SPEC"].startswith("s3://") and env["VIDTUNE_SPEC"].endswith(".yaml")
    assert pod["nodeSelector"]["nvidia.com/gpu.product"].startswith("Tesla-V100")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 2
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert job["spec"]["activeDeadlineSeconds"] > 0 and job["spec"]["ttlSecondsAfterFinished"] > 0


def test_jobs_use_the_settings_the_base_gives_the_services():
    """The kubectl Jobs and the Jobs the train service starts come from the same builder and settings."""
    from vidtune.platform import kube

    train = next(o for _, o in base_objects() if o["kind"] == "Deployment" and o["metadata"]["name"] == "vidtune-train")
    settings = kube.ClusterSettings.from_env(container_env(train["spec"]["template"]["spec"]["containers"][0]))
    (job,) = parse_docs((K8S / "jobs" / "train-job.yaml").read_text())
    (pod,) = pod_specs(job)
    assert pod["serviceAccountName"] == settings.service_account
    assert pod["containers"][0]["image"] == settings.image
    assert pod["containers"][0]["envFrom"] == [{"configMapRef": {"name": settings.config_map}}]
    assert next(v for v in pod["volumes"] if v["name"] == "s3-credentials")["secret"]["secretName"] == settings.s3_secret
    assert settings.labels.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert not [o for _, o in base_objects() if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("template")]


def test_spec_example_in_the_docs_matches_the_training_job():
    """docs/cluster.md shows the spec the training Job reads; it must be one the train service accepts."""
    import importlib.util
    import re
    import textwrap

    from vidtune.train.tasks import config_of, spec_errors

    loader = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    generate = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(generate)
    doc = (ROOT / "docs" / "cluster.md").read_text()
    block = re.search(r"cat > first-lora.yaml <<'EOF'\n(.*?)\n\s*EOF", doc, re.S)
    assert block, "docs/cluster.md lost the training spec example"
    spec = yaml.safe_load(textwrap.dedent(block.group(1)))
    assert spec == generate.TRAIN_SPEC and not spec_errors(spec)
    assert config_of(spec).num_gpus == 2
    assert generate.TRAIN_SPEC_URI in doc


def test_all_k8s_pods_are_non_root_and_read_only():
    objects = base_objects() + [(str(p), d) for p in job_files() for d in parse_docs(p.read_text())]
    checked = 0
    for path, obj in objects:
        for spec in pod_specs(obj):
            for c in spec["containers"]:
                sc, pod_sc = c["securityContext"], spec["securityContext"]
                assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, path
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, path
                checked += 1
    assert checked == 7  # four services, the console, two Jobs
