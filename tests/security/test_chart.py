"""Least privilege in the chart: TLS on by default, no Deployment holding the store's root credentials, bucket-
scoped S3 users made by the hook, egress denied but for DNS, the store and (train, evaluate) the API server."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
from deploy_support import KUBE_VERSIONS, container_env, pod_specs, render, schema_errors, worker_jobs  # noqa: E402

ROOT_SECRET = "vidtune-s3"  # MinIO's root user (objectStorage.existingSecret or the chart's own)
SERVICES = ("transcode", "quality", "train", "evaluate")


def secret_names(spec: dict) -> set[str]:
    """Every Secret a pod spec can read: volumes, env and envFrom references, and (for a service that launches
    Jobs) the Secret it hands to its workers."""
    names = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    names |= {v["secretName"] for vol in spec.get("volumes", []) for src in vol.get("projected", {}).get("sources", [])
              for v in [src.get("secret")] if v}
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                  if "secretKeyRef" in e.get("valueFrom", {})}
        names |= {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
        names |= {v for k, v in container_env(c).items() if k == "VIDTUNE_K8S_S3_SECRET"}
    return names


@pytest.mark.parametrize("values", [{}, {"objectStorage": {"existingSecret": ROOT_SECRET}}],
                         ids=["chart-made", "existing"])
def test_no_deployment_receives_the_store_root_credentials(values):
    _, objects = render(values)
    holders = {}
    for path, obj in objects + worker_jobs(objects):
        for spec in pod_specs(obj):
            holders[f"{obj['kind']}/{obj['metadata']['name']}"] = secret_names(spec)
    deployments = {k: v for k, v in holders.items() if k.startswith("Deployment/")}
    assert len(deployments) == 5  # the four services and the console
    for name, secrets in deployments.items():
        component = name.split("-", 1)[1]
        assert ROOT_SECRET not in secrets, name
        assert f"vidtune-s3-{component}" in secrets, name  # its own scoped user
    assert not [k for k, v in holders.items() if ROOT_SECRET in v and k not in (
        "StatefulSet/vidtune-minio", "Job/vidtune-buckets")], holders
    workers = [k for k in holders if k.startswith("Job/") and k != "Job/vidtune-buckets"]
    assert len(workers) == 2 and all(ROOT_SECRET not in holders[k] for k in workers)


def test_bucket_hook_makes_a_scoped_user_per_service_and_services_never_create_buckets():
    _, objects = render({"objectStorage": {"extraBuckets": ["vidtune-models"], "prefix": "team-a/"}})
    (hook,) = [o for _, o in objects if o["kind"] == "Job"]
    script = hook["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "mc admin user add" in script and "mc admin policy attach vidtune vidtune-rw" in script
    assert "for user in transcode quality train evaluate console; do" in script
    (policy_cm,) = [o for _, o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "vidtune-s3-policy"]
    policy = json.loads(policy_cm["data"]["policy.json"])
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    assert "s3:CreateBucket" not in actions and not any(a.startswith("admin:") or a == "s3:*" for a in actions)
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    assert resources == {"arn:aws:s3:::vidtune", "arn:aws:s3:::vidtune-models", "arn:aws:s3:::vidtune/team-a/*",
                         "arn:aws:s3:::vidtune-models/team-a/*"}
    env = next(o for _, o in objects if o["metadata"]["name"] == "vidtune-env")["data"]
    assert env["VIDTUNE_CREATE_BUCKETS"] == "0" and env["VIDTUNE_S3_BUCKETS"] == "vidtune,vidtune-models"
    assert env["VIDTUNE_S3_PREFIX"] == "team-a/" and "VIDTUNE_ALLOW_LOCAL_PATHS" not in env


def test_tls_is_on_by_default_with_a_kept_certificate_for_every_service_name():
    import base64

    from cryptography import x509

    _, objects = render({})
    (secret,) = [o for _, o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "vidtune-tls"]
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    for svc in SERVICES:
        assert f"vidtune-{svc}.vidtune-test.svc" in names
    for _, obj in objects:
        if obj["kind"] == "Deployment":
            spec = obj["spec"]["template"]["spec"]
            assert "vidtune-tls" in secret_names(spec)
            assert container_env(spec["containers"][0])["VIDTUNE_TLS_CERT_FILE"]


def test_cert_manager_writes_the_certificate_when_asked():
    _, objects = render({"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca-issuer"}}}})
    (cert,) = [o for _, o in objects if o["kind"] == "Certificate"]
    assert cert["apiVersion"] == "cert-manager.io/v1" and cert["spec"]["secretName"] == "vidtune-tls"
    assert cert["spec"]["issuerRef"]["name"] == "ca-issuer" and "vidtune-train.vidtune-test.svc" in cert["spec"]["dnsNames"]
    assert not [o for _, o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "vidtune-tls"]


def test_egress_is_limited_to_dns_the_store_and_for_train_and_evaluate_the_api_server():
    _, objects = render({})
    policies = {o["metadata"]["name"]: o["spec"] for _, o in objects if o["kind"] == "NetworkPolicy"}
    assert policies["vidtune-default-deny"]["policyTypes"] == ["Ingress", "Egress"]
    assert "egress" not in policies["vidtune-default-deny"]
    rules = policies["vidtune-egress"]["egress"]
    assert {p["port"] for p in rules[0]["ports"]} == {53}
    assert rules[1]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "vidtune"
    assert len(rules) == 2  # the bundled store is one of the release's pods: nothing outside it
    api = policies["vidtune-egress-apiserver"]
    assert api["podSelector"]["matchExpressions"][0]["values"] == ["train", "evaluate"]
    assert {p["port"] for p in api["egress"][0]["ports"]} == {443, 6443}
    _, external = render({"minio": {"enabled": False}, "objectStorage": {
        "existingSecret": "s3", "external": {"endpoint": "https://s3.example.com"}},
        "networkPolicy": {"externalStore": {"cidrs": ["203.0.113.0/24"], "ports": [443]}}})
    rules = next(o for _, o in external if o["metadata"]["name"] == "vidtune-egress")["spec"]["egress"]
    assert rules[2] == {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}
    for version in KUBE_VERSIONS[-1:]:
        for _, obj in external:
            assert not schema_errors(obj, version), obj["metadata"]["name"]


def test_images_are_pulled_by_digest_when_pinned():
    import helm_python

    digest = "sha256:" + "ab" * 32
    _, objects = render({"image": {"digest": digest}, "gpuImage": {"digest": digest}, "requireDigests": True})
    images = {c["image"] for _, o in objects for s in pod_specs(o) for c in s["containers"]}
    assert all("@sha256:" in i for i in images), images
    with pytest.raises(helm_python.HelmError, match="requireDigests: image .* has no digest"):
        render({"requireDigests": True})


def test_images_install_python_dependencies_from_the_lock():
    import re
    import tomllib

    root = Path(__file__).resolve().parents[2]
    lock = (root / "docker" / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([a-z0-9-]+)==(\S+)$", lock, re.M))
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", dep).group()).lower()
        if name not in ("torch", "torchvision"):
            assert name in pins, f"{name} is not pinned in docker/requirements.lock"
    assert len(pins) > 50 and "torch" not in pins  # torch comes from its own index, pinned by constraints.txt
    for name in ("cpu", "cuda"):
        dockerfile = (root / "docker" / f"{name}.Dockerfile").read_text()
        assert "COPY docker/requirements.lock ./docker/" in dockerfile
        assert "ENV PIP_CONSTRAINT=/src/docker/requirements.lock" in dockerfile
        assert "!docker/requirements.lock" in (root / "docker" / f"{name}.Dockerfile.dockerignore").read_text()
