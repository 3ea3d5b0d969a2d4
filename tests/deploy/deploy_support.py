"""Helpers for the deployment tests: render the Helm chart, read the kubectl manifests, validate schemas.

Rendering uses the real Helm engine (helm-python-sdk) offline; validation uses the official Kubernetes
JSON schemas shipped by kubernetes-validate. No cluster is involved.
"""
from __future__ import annotations

import functools
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "vidtune"
K8S = ROOT / "k8s"
DOCKER = ROOT / "docker"
KUBE_VERSIONS = ("1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")
NAMESPACE = "vidtune-test"

# Values a test sets as credentials; none of them may appear anywhere but in a Secret.
S3_ACCESS = "AKIAVIDTUNETESTACCESS"
S3_SECRET = "vidtune-test-secret-key-9f3b2c1d7e"
GRPC_TOKEN = "vidtune-test-grpc-token-5a6b7c8d"


def profile_values(name: str) -> dict:
    """Values for one rendering profile: chart defaults, the GPU profile or the external-S3 profile."""
    if name == "default":
        return {}
    return yaml.safe_load((CHART / f"values-{name}.yaml").read_text())


PROFILES = ("default", "gpu", "external-s3")


def parse_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


@functools.lru_cache(maxsize=None)
def _render(values_yaml: str) -> tuple[dict[str, str], tuple]:
    import helm_python

    values = yaml.safe_load(values_yaml) or {}
    with helm_python.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="vidtune", namespace=NAMESPACE)
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend((path, doc) for doc in parse_docs(text))
    return rendered, tuple(objects)


def render(values: dict) -> tuple[dict[str, str], list[tuple[str, dict]]]:
    """(template path -> text, [(template path, object)]) for the chart rendered with `values`."""
    rendered, objects = _render(yaml.safe_dump(values, sort_keys=True))
    return rendered, list(objects)


def kustomize_resources(directory: Path) -> list[tuple[str, dict]]:
    """The objects a kustomization with only `resources:` of local files produces, in order."""
    kfile = next(p for p in (directory / n for n in ("kustomization.yaml", "kustomization.yml", "Kustomization"))
                 if p.exists())
    kustomization = yaml.safe_load(kfile.read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources"}
    assert not unsupported, f"{kfile}: only plain resources are supported here, found {sorted(unsupported)}"
    out = []
    for name in kustomization["resources"]:
        path = directory / name
        assert path.is_file(), f"{kfile} lists {name}, which is not a file"
        out.extend((str(path.relative_to(ROOT)), doc) for doc in parse_docs(path.read_text()))
    return out


# --- schema validation -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _validator(kind: str, api_version: str, kube_version: str):
    """A jsonschema validator for one kind at one Kubernetes version, strict (no unknown fields)."""
    import re

    import jsonschema
    import kubernetes_validate.utils as kv
    from referencing import Registry, Resource

    version = [v for v in kv.all_versions() if kv.major_minor(v) == kv.major_minor(kube_version)]
    assert version, f"kubernetes-validate ships no schemas for {kube_version}"
    schema_dir = f"kubernetes-json-schema/v{version[-1]}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = _schema_file(f"{schema_dir}/{kind.lower()}-{group}.json", kube_version)
    definitions = _schema_file(f"{schema_dir}/_definitions.json", kube_version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


@functools.lru_cache(maxsize=None)
def _schema_file(name: str, kube_version: str):
    import kubernetes_validate.utils as kv

    return kv.schema_contents(name, kube_version)


def schema_errors(obj: dict, kube_version: str) -> list[str]:
    """Every schema violation of `obj` at `kube_version`, as 'path: message' strings."""
    validator = _validator(obj["kind"], obj["apiVersion"], kube_version)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(obj)]


def pod_specs(obj: dict) -> list[dict]:
    """The pod specs inside a workload object (Pod, Deployment, StatefulSet, Job)."""
    if obj["kind"] == "Pod":
        return [obj["spec"]]
    if obj["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        return [obj["spec"]["template"]["spec"]]
    return []


def container_env(container: dict, namespace: str = NAMESPACE) -> dict[str, str]:
    """A container's env as the process would see it (the downward-API namespace filled in)."""
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[e["name"]] = namespace
    return env


# The job kind each job-launching service is exercised with: its heaviest, GPU work.
LAUNCHER_KINDS = {"train": "train.run", "evaluate": "evaluate.generate"}


def worker_jobs(objects: list[tuple[str, dict]], namespace: str = NAMESPACE) -> list[tuple[str, dict]]:
    """The worker Job each job-launching Deployment would create, built by vidtune's own code from the
    VIDTUNE_K8S_* env the chart gives it (a job with the cluster's default GPU count)."""
    from vidtune.platform import kube
    from vidtune.platform.jobs import new_record

    out = []
    for path, obj in objects:
        component = obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        if obj["kind"] != "Deployment" or component not in LAUNCHER_KINDS:
            continue
        env = container_env(obj["spec"]["template"]["spec"]["containers"][0], namespace)
        assert env.get("VIDTUNE_KUBERNETES") == "1", f"{path}: {component} is not told to launch Jobs"
        settings = kube.ClusterSettings.from_env(env)
        record = new_record(component, LAUNCHER_KINDS[component], {}, backend="kubernetes")
        out.append((f"{path}#{component}-worker-job", kube.manifest(kube.worker_job(record, settings))))
    return out
