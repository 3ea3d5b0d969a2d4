"""k8s/: the kustomize base and the Job templates, as `kubectl apply` would read them."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from deploy_support import K8S, KUBE_VERSIONS, ROOT, job_templates, kustomize_resources, parse_docs, pod_specs, \
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
    objects = base_objects() + job_templates(base_objects())
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
    assert container["args"] == ["worker", "--service", "$(VIDTUNE_WORKER_SERVICE)", "--job-id", "$(VIDTUNE_JOB_ID)"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VIDTUNE_WORKER_SERVICE"] == "train" and env["VIDTUNE_JOB_ID"]
    assert pod["nodeSelector"]["nvidia.com/gpu.product"].startswith("Tesla-V100")
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"


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
    assert checked == 6
