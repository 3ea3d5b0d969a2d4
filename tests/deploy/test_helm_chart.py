"""The Helm chart, rendered by the real Helm engine for each profile and read object by object."""
from __future__ import annotations

import base64
import json

import pytest
import yaml

from deploy_support import (CHART, GRPC_TOKEN, KUBE_VERSIONS, NAMESPACE, PROFILES, S3_ACCESS, S3_SECRET, container_env,
                            pod_specs, profile_values, render, schema_errors, worker_jobs)

SERVICES = {"transcode": 50051, "quality": 50052, "train": 50053, "evaluate": 50054}
V100_SELECTOR = ("nvidia.com/gpu.product", "Tesla-V100-SXM2-32GB")


def by_kind(objects, kind):
    return [obj for _, obj in objects if obj["kind"] == kind]


def deployment(objects, component):
    found = [d for d in by_kind(objects, "Deployment")
             if d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {component} Deployment, found {len(found)}"
    return found[0]


def all_pod_specs(objects):
    """Every pod spec the release runs: workloads, hooks, the helm test pod and the worker Jobs the services
    build from the chart's settings."""
    specs = []
    for path, obj in list(objects) + worker_jobs(objects):
        specs.extend((f"{path}:{obj['kind']}/{obj['metadata'].get('name') or obj['metadata'].get('generateName')}", s)
                     for s in pod_specs(obj))
    return specs


# --- lint and schema ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PROFILES)
def test_chart_lints_strictly(name):
    import helm_python

    report = helm_python.lint(str(CHART), profile_values(name) or None, strict=True, namespace="vidtune-test",
                              kube_version="v1.28.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


def test_every_rendered_object_matches_the_kubernetes_schemas(rendered):
    objects = list(rendered) + worker_jobs(rendered)
    assert len(objects) > 15 and len(worker_jobs(rendered)) == 2
    failures = []
    for version in KUBE_VERSIONS:
        for path, obj in objects:
            failures += [f"{version} {path} {obj['kind']}: {e}" for e in schema_errors(obj, version)]
    assert not failures, "\n".join(failures[:20])


def test_schema_validation_is_not_vacuous():
    """A misspelt field and a wrong type must both be caught, or the test above proves nothing."""
    _, objects = render({})
    dep = json.loads(json.dumps(deployment(objects, "train")))
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {"port": 1}
    dep["spec"]["replicas"] = "one"
    errors = schema_errors(dep, "1.30.0")
    assert any("grcp" in e for e in errors) and any("replicas" in e for e in errors), errors


def test_values_schema_rejects_bad_values():
    import helm_python

    with helm_python.Chart.load(str(CHART)) as chart:
        chart.validate_schema({})
        for bad in ({"services": {"train": {"placement": "tpu"}}},
                    {"objectStorage": {"bucket": "Not_A_Bucket"}},
                    {"securityContext": {"allowPrivilegeEscalation": True}},
                    {"unknownTopLevel": 1}):
            with pytest.raises(helm_python.HelmError):
                chart.validate_schema(bad)


# --- placement and GPUs -------------------------------------------------------------------------------

def test_gpu_workloads_carry_the_v100_selector_and_gpu_limits(rendered):
    gpu_specs = [(where, spec) for where, spec in all_pod_specs(rendered)
                 if any("nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {}) for c in spec["containers"])]
    components = {where for where, _ in gpu_specs}
    assert any("train" in w for w in components) and any("evaluate" in w for w in components), components
    assert sum("worker-job" in w for w in components) == 2, "the worker Jobs must ask for GPUs"
    for where, spec in gpu_specs:
        assert spec.get("nodeSelector", {}).get(V100_SELECTOR[0]) == V100_SELECTOR[1], where
        assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])), where
        for c in spec["containers"]:
            limit = c["resources"]["limits"].get("nvidia.com/gpu")
            # the chart writes an integer, the kubernetes client a quantity string
            assert str(limit).isdigit() and int(limit) >= 1, (where, limit)
            assert c["resources"].get("requests", {}).get("nvidia.com/gpu", limit) == limit, where
            assert c["image"].endswith("-cu126"), (where, c["image"])


def test_cpu_services_stay_off_gpu_nodes_by_default():
    _, objects = render({})
    for name in ("transcode", "quality"):
        spec = deployment(objects, name)["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in spec["containers"][0]["resources"].get("limits", {})
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert {"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"} in terms[0]["matchExpressions"]
        assert not spec["containers"][0]["image"].endswith("-cu126")


def test_placement_is_overridable_per_service():
    _, objects = render({"services": {"train": {"nodeSelector": {"pool": "a100"}, "gpus": 2},
                                      "transcode": {"affinity": {}, "nodeSelector": {"pool": "cpu"}}}})
    train = deployment(objects, "train")["spec"]["template"]["spec"]
    assert train["nodeSelector"] == {"pool": "a100"}
    assert train["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    transcode = deployment(objects, "transcode")["spec"]["template"]["spec"]
    assert transcode["nodeSelector"] == {"pool": "cpu"} and "affinity" not in transcode


def test_gpu_profile_moves_transcode_to_nvenc_and_enables_scheduling_extras():
    _, objects = render(profile_values("gpu"))
    transcode = deployment(objects, "transcode")["spec"]["template"]["spec"]
    assert transcode["nodeSelector"][V100_SELECTOR[0]] == V100_SELECTOR[1]
    env = {e["name"]: e.get("value") for e in transcode["containers"][0]["env"]}
    assert env["VIDTUNE_TRANSCODE_ENCODER"] == "h264_nvenc"
    (pc,) = by_kind(objects, "PriorityClass")
    for _, job in worker_jobs(objects):
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "vidtune-v100"
        assert job["spec"]["suspend"] is True  # Kueue admits suspended Jobs
        assert job["spec"]["activeDeadlineSeconds"] == 604800
        pod = job["spec"]["template"]["spec"]
        assert pod["priorityClassName"] == pc["metadata"]["name"]
        (container,) = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert container["command"] == ["torchrun"] and "--nproc_per_node=8" in container["args"]


# --- probes --------------------------------------------------------------------------------------------

def test_probes_ask_grpc_health_over_tls(rendered):
    """TLS is on by default; Kubernetes' native gRPC probes speak only plaintext, so readiness runs vidtune's
    own health check over TLS, liveness too, and startup checks the port."""
    services = {s["metadata"]["labels"]["app.kubernetes.io/component"]: s for s in by_kind(rendered, "Service")}
    for name, port in SERVICES.items():
        container = deployment(rendered, name)["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][:2] == ["serve", name] and container["args"][3] == str(port)
        assert container["ports"] == [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]
        assert container["startupProbe"]["tcpSocket"]["port"] == port
        assert container["readinessProbe"]["exec"]["command"] == [
            "python", "-m", "vidtune.platform.tls", str(port), f"vidtune.v1.{name.capitalize()}Service"]
        # Liveness must not follow the object store (an outage would restart every pod); readiness does.
        assert container["livenessProbe"]["exec"]["command"][-1] == "vidtune.v1.Liveness"
        env = container_env(container)
        assert env["VIDTUNE_TLS_CERT_FILE"].endswith("/tls.crt") and env["VIDTUNE_TLS_KEY_FILE"].endswith("/tls.key")
        assert env["VIDTUNE_TLS_SERVER_NAME"] == f"vidtune-{name}.{NAMESPACE}.svc"
        grace = deployment(rendered, name)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert 0 < float(env["VIDTUNE_STOP_GRACE"]) < grace, "the drain must end before the pod is killed"
        strategy = deployment(rendered, name)["spec"]["strategy"]
        assert strategy["type"] == "Recreate" or strategy["rollingUpdate"]["maxUnavailable"] == 0
        (svc_port,) = services[name]["spec"]["ports"]
        assert svc_port["port"] == port and svc_port["appProtocol"] == "grpc"


def test_probes_use_native_grpc_health_without_tls():
    _, objects = render({"tls": {"enabled": False}})
    for name, port in SERVICES.items():
        container = deployment(objects, name)["spec"]["template"]["spec"]["containers"][0]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert set(container[probe]) & {"httpGet", "exec", "tcpSocket"} == set(), (name, probe)
            assert container[probe]["grpc"]["port"] == port, (name, probe)
        assert container["readinessProbe"]["grpc"]["service"] == f"vidtune.v1.{name.capitalize()}Service"
        assert "VIDTUNE_TLS_CERT_FILE" not in container_env(container)
        # Liveness must not follow the object store (an outage would restart every pod); readiness does.
        assert container["livenessProbe"]["grpc"]["service"] == "vidtune.v1.Liveness"


# --- security ------------------------------------------------------------------------------------------

def test_every_container_runs_as_non_root_without_privilege_escalation(rendered):
    specs = all_pod_specs(rendered)
    assert len(specs) >= 6
    for where, spec in specs:
        pod_sc = spec.get("securityContext", {})
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert non_root is True and uid and uid > 0, (where, c["name"])
            assert sc.get("allowPrivilegeEscalation") is False, (where, c["name"])
            assert sc.get("privileged") is not True, (where, c["name"])
            assert sc.get("readOnlyRootFilesystem") is True, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, (where, c["name"], "a read-only root needs a writable /tmp")


def test_vidtune_containers_have_cache_and_training_pods_have_memory_shm(rendered):
    for where, spec in all_pod_specs(rendered):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            if c["name"] != "worker" and (c.get("command") != ["vidtune"] or c["args"][0] == "health"):
                continue
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert "/var/cache/vidtune" in mounts, where
            if c["name"] == "worker" or c["args"][:2] in (["serve", "train"], ["serve", "evaluate"]):
                shm = volumes[mounts["/dev/shm"]]
                assert shm["emptyDir"]["medium"] == "Memory", where


def test_rbac_lets_only_train_and_evaluate_manage_jobs(rendered):
    (role,) = by_kind(rendered, "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {(("batch",), ("jobs",)): {"create", "get", "list", "watch", "delete"},
                     (("",), ("pods", "pods/log")): {"get", "list", "watch"}}
    assert not by_kind(rendered, "ClusterRole") and not by_kind(rendered, "ClusterRoleBinding")
    (binding,) = by_kind(rendered, "RoleBinding")
    (subject,) = binding["subjects"]
    for name in SERVICES:
        spec = deployment(rendered, name)["spec"]["template"]["spec"]
        bound = spec["serviceAccountName"] == subject["name"]
        assert bound == (name in ("train", "evaluate")), name
        assert spec["automountServiceAccountToken"] is bound, name
        env = {e["name"] for e in spec["containers"][0]["env"]}
        assert ("VIDTUNE_K8S_NAMESPACE" in env) == bound, name


def test_network_policies_cover_every_pod(rendered):
    policies = by_kind(rendered, "NetworkPolicy")
    deny = [p for p in policies if "ingress" not in p["spec"]]
    assert deny and deny[0]["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "vidtune"
    allowed_ports = {p["port"] for pol in policies for rule in pol["spec"].get("ingress", []) for p in rule["ports"]}
    assert set(SERVICES.values()) <= allowed_ports


# --- secrets -------------------------------------------------------------------------------------------

CREDENTIAL_VALUES = {
    "objectStorage": {"accessKey": S3_ACCESS, "secretKey": S3_SECRET},
    "auth": {"token": GRPC_TOKEN},
}


@pytest.mark.parametrize("name", PROFILES)
def test_no_secret_value_appears_outside_secrets(name):
    values = profile_values(name)
    values = json.loads(json.dumps(values))
    values.setdefault("objectStorage", {}).update(CREDENTIAL_VALUES["objectStorage"])
    values.setdefault("auth", {}).update(CREDENTIAL_VALUES["auth"])
    values["objectStorage"]["existingSecret"] = ""
    values["auth"]["existingSecret"] = ""
    rendered_text, objects = render(values)
    needles = [S3_ACCESS, S3_SECRET, GRPC_TOKEN]
    needles += [base64.b64encode(n.encode()).decode() for n in needles]
    for path, obj in objects:
        if obj["kind"] == "Secret":
            continue
        text = yaml.safe_dump(obj)
        leaked = [n for n in needles if n in text]
        assert not leaked, f"{path} {obj['kind']}/{obj['metadata']['name']} contains credential values"
    notes = next(t for p, t in rendered_text.items() if p.endswith("NOTES.txt"))
    assert not any(n in notes for n in needles)
    secrets = {s["metadata"]["name"]: s for s in by_kind(objects, "Secret")}
    decoded = {(n, k): base64.b64decode(v).decode() for n, s in secrets.items() for k, v in s["data"].items()}
    given = {k: v for k, v in decoded.items() if v in (S3_ACCESS, S3_SECRET, GRPC_TOKEN)}
    assert given == {("vidtune-s3", "access-key"): S3_ACCESS, ("vidtune-s3", "secret-key"): S3_SECRET,
                     ("vidtune-auth", "token"): GRPC_TOKEN}


def test_credentials_reach_containers_only_through_secret_references():
    _, objects = render({"objectStorage": {"accessKey": S3_ACCESS, "secretKey": S3_SECRET}})
    for where, spec in all_pod_specs(objects):
        for c in spec["containers"]:
            for e in c.get("env", []):
                if any(w in e["name"] for w in ("SECRET", "PASSWORD", "ACCESS_KEY", "TOKEN")) \
                        and not e["name"].endswith(("_FILE", "_DIR", "_K8S_S3_SECRET", "_K8S_IMAGE_PULL_SECRETS")):
                    assert "secretKeyRef" in e.get("valueFrom", {}), (where, e["name"])


def test_existing_secrets_mean_no_secret_is_rendered():
    values = {"objectStorage": {"existingSecret": "my-s3", "scopedUsers": False}, "auth": {"existingSecret": "my-token"},
              "tls": {"existingSecret": "my-tls"}}
    _, objects = render(values)
    assert not by_kind(objects, "Secret")
    names = {v["secret"]["secretName"] for _, spec in all_pod_specs(objects)
             for v in spec.get("volumes", []) if "secret" in v}
    assert names == {"my-s3", "my-token", "my-tls"}
    minio = by_kind(objects, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in minio["env"] if "valueFrom" in e}
    assert refs == {"my-s3"}


def test_external_s3_profile_has_no_minio_and_points_at_the_endpoint():
    values = profile_values("external-s3")
    _, objects = render(values)
    assert not by_kind(objects, "StatefulSet") and not by_kind(objects, "Secret")
    env = next(c for c in by_kind(objects, "ConfigMap") if c["metadata"]["name"].endswith("-env"))["data"]
    assert env["VIDTUNE_S3_ENDPOINT"] == values["objectStorage"]["external"]["endpoint"]
    assert env["VIDTUNE_JOBS_ROOT"] == "s3://broadcaster-vidtune/jobs"
    assert not any("minio" in yaml.safe_dump(o) for _, o in objects if o["kind"] != "ConfigMap")


def test_external_s3_without_credentials_fails_with_a_clear_message():
    import helm_python

    with pytest.raises(helm_python.HelmError, match="external S3 needs objectStorage.existingSecret"):
        render({"minio": {"enabled": False}, "objectStorage": {"external": {"endpoint": "https://s3.example.com"}}})


# --- MinIO and the bucket hook ------------------------------------------------------------------------

def test_minio_image_is_pinned_and_overridable():
    _, objects = render({})
    (sts,) = by_kind(objects, "StatefulSet")
    image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("quay.io/minio/minio:RELEASE.") and "@sha256:" in image
    _, objects = render({"minio": {"image": {"repository": "registry.local/minio", "tag": "v1", "digest": ""}}})
    (sts,) = by_kind(objects, "StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/minio:v1"


def test_bucket_hook_creates_every_bucket():
    _, objects = render({"objectStorage": {"extraBuckets": ["vidtune-models", "vidtune"]}})
    (job,) = [j for j in by_kind(objects, "Job") if j["metadata"]["name"].endswith("-buckets")]
    assert "post-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "for bucket in vidtune vidtune-models; do" in script
    assert "mc mb --ignore-existing" in script


# --- what the services are told ------------------------------------------------------------------------

def test_job_launching_services_get_a_consistent_worker_configuration():
    """The services build worker Jobs from VIDTUNE_K8S_*: those must carry the chart's values."""
    values = profile_values("gpu")
    values["imagePullSecrets"] = [{"name": "regcred"}]
    _, objects = render(values)
    jobs = dict(worker_jobs(objects))
    (pc,) = by_kind(objects, "PriorityClass")
    for name in ("train", "evaluate"):
        spec = deployment(objects, name)["spec"]["template"]["spec"]
        container = spec["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["VIDTUNE_KUBERNETES"]["value"] == "1"
        assert env["VIDTUNE_K8S_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        assert "VIDTUNE_K8S_JOB_TEMPLATE" not in env, "Jobs come from the code's builder, not a template"
        assert "/etc/vidtune" not in {m["mountPath"] for m in container["volumeMounts"]}
        (job,) = [j for where, j in jobs.items() if where.endswith(f"#{name}-worker-job")]
        pod = job["spec"]["template"]["spec"]
        (worker,) = pod["containers"]
        assert job["metadata"]["namespace"] == NAMESPACE
        assert worker["image"] == "ghcr.io/vidtune/vidtune:0.1.0-cu126" == env["VIDTUNE_K8S_IMAGE"]["value"]
        assert pod["nodeSelector"] == dict([V100_SELECTOR])
        assert pod["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
        assert worker["resources"] == {"limits": {"cpu": "64", "memory": "480Gi", "nvidia.com/gpu": "8"},
                                       "requests": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"}}
        assert pod["serviceAccountName"] == "vidtune-worker" and pod["automountServiceAccountToken"] is False
        assert pod["priorityClassName"] == pc["metadata"]["name"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert worker["envFrom"] == [{"configMapRef": {"name": "vidtune-env"}}]
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]
        assert shm == {"medium": "Memory", "sizeLimit": "64Gi"}
        assert "auth-token" not in {v["name"] for v in pod["volumes"]}, "workers serve no gRPC: no token"
        # The release's selector labels let the MinIO NetworkPolicy admit the worker.
        (minio_policy,) = [p for p in by_kind(objects, "NetworkPolicy") if p["metadata"]["name"].endswith("-minio")]
        allowed = minio_policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        assert allowed.items() <= job["spec"]["template"]["metadata"]["labels"].items()


def test_worker_job_from_the_train_env_is_placed_secured_and_valid():
    """The Job the train service would start with the chart's default settings, end to end."""
    from kubernetes_validate import validate

    from vidtune.platform import kube
    from vidtune.platform.jobs import new_record

    _, objects = render({})
    train = deployment(objects, "train")["spec"]["template"]["spec"]["containers"][0]
    settings = kube.ClusterSettings.from_env(container_env(train))
    record = new_record("train", "train.run", {}, backend="kubernetes")
    job = kube.manifest(kube.worker_job(record, settings))
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["nodeSelector"] == dict([V100_SELECTOR])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    # credentials: the Secret is mounted as files, nothing from it is inlined in env
    secret_mount = mounts[kube.S3_SECRET_DIR]
    assert secret_mount["readOnly"] is True
    assert volumes[secret_mount["name"]]["secret"]["secretName"] == "vidtune-s3-train"  # train's own S3 user
    assert not [e for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {}) or "KEY" in e["name"]]
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["ttlSecondsAfterFinished"] == 86400
    assert job["metadata"]["labels"]["vidtune.io/job-id"] == record["id"]
    assert c["args"] == ["worker", "--service", "train", "--job-id", record["id"]]
    for version in KUBE_VERSIONS:
        validate(job, version, strict=True)


def test_notes_tell_how_to_reach_the_services_and_submit_a_job():
    rendered_text, _ = render({})
    notes = next(t for p, t in rendered_text.items() if p.endswith("NOTES.txt"))
    for name, port in SERVICES.items():
        assert f"vidtune-{name}.vidtune-test.svc:{port}" in notes
    assert "port-forward" in notes and "vidtune transcode submit" in notes and "--watch" in notes
    assert "kubectl -n vidtune-test apply -f k8s/jobs/transcode-indexed-job.yaml" in notes
