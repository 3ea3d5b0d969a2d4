"""The console in the Helm chart: rendered by the real Helm engine, checked against the Kubernetes schemas."""
from __future__ import annotations

import pytest
from deploy_support import render, schema_errors


def console_objects(values: dict) -> dict[str, dict]:
    _, objects = render(values)
    return {o["kind"]: o for _, o in objects if o["metadata"]["name"].endswith("-console")}


def deployment_of(values: dict, component: str) -> dict:
    _, objects = render(values)
    return next(o for _, o in objects if o["kind"] == "Deployment"
                and o["metadata"]["labels"]["app.kubernetes.io/component"] == component)


def test_console_deployment_service_and_ingress():
    objs = console_objects({"console": {"ingress": {"enabled": True, "host": "vidtune.example.org",
                                                    "className": "nginx"},
                                        "readOnlyToken": {"existingSecret": "vidtune-console-ro"}}})
    # The Secret is the console's own bucket-scoped S3 user (vidtune-s3-console), made like the services'.
    assert set(objs) == {"Deployment", "Service", "Ingress", "NetworkPolicy", "Secret"}
    for obj in objs.values():
        assert not schema_errors(obj, "1.30.0"), obj["kind"]
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"] == ["console", "--host", "0.0.0.0", "--port", "8080"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VIDTUNE_TRAIN_ENDPOINT"] == "vidtune-train:50053"
    assert env["VIDTUNE_TOKEN_FILE"] and env["VIDTUNE_CONSOLE_READONLY_TOKEN_FILE"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    # The same hardening as every service.
    train = deployment_of({}, "train")["spec"]["template"]["spec"]
    assert pod["securityContext"] == train["securityContext"]
    assert c["securityContext"] == train["containers"][0]["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    rule = objs["Ingress"]["spec"]["rules"][0]
    assert rule["host"] == "vidtune.example.org"
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": "vidtune-console", "port": {"name": "http"}}
    assert objs["NetworkPolicy"]["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}]


def test_console_can_be_left_out_and_needs_auth():
    assert console_objects({"console": {"enabled": False}}) == {}
    with pytest.raises(Exception, match="console.enabled needs auth.enabled"):
        render({"auth": {"enabled": False}})
    assert console_objects({"auth": {"enabled": False}, "console": {"enabled": False}}) == {}
