"""`vidtune train submit --nodes N --backend kubernetes --dry-run` renders a Kubeflow Trainer v2 TrainJob that the
published CRD schema (tests/deploy/schemas/, Kubeflow Trainer v2.3.0) accepts, checked strictly: an unknown
field anywhere is an error, as with `kubectl apply --validate=strict`. The CRD's CEL rules
(x-kubernetes-validations) and the runtime's admission webhook run only on a cluster."""
from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

SCHEMA = Path(__file__).parent / "schemas" / "trainer.kubeflow.org_trainjobs_v1alpha1.yaml"


def _strict(schema):
    """The schema with unknown fields refused wherever it lists the known ones (structural schemas prune
    them silently; a typo in a manifest should fail here instead)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=1)
def validator():
    schema = _strict(yaml.safe_load(SCHEMA.read_text()))
    return jsonschema.validators.Draft7Validator(schema)


def errors(obj: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator().iter_errors(obj)]


def _submit(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vidtune.cli", "train", "submit", "--preset",
                           "v100-8gpu-t2v-a14b-high-480x832x49", "--set", "weights=s3://vidtune/models/a14b",
                           "--dataset", "s3://vidtune/qa/export", "--out", "s3://vidtune/runs/a14b", *extra],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())


@pytest.fixture(scope="module")
def trainjob() -> dict:
    proc = _submit("--backend", "kubernetes", "--dry-run", "--nodes", "2")
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_the_rendered_trainjob_passes_the_published_schema(trainjob):
    assert trainjob["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and trainjob["kind"] == "TrainJob"
    assert errors(trainjob) == []


def test_the_schema_check_refuses_what_a_cluster_would(trainjob):
    misspelled = copy.deepcopy(trainjob)
    misspelled["spec"]["trainer"]["numNode"] = 2
    wrong_type = copy.deepcopy(trainjob)
    wrong_type["spec"]["trainer"]["numNodes"] = "two"
    no_runtime = copy.deepcopy(trainjob)
    del no_runtime["spec"]["runtimeRef"]
    assert any("numNode" in e for e in errors(misspelled))
    assert any("trainer.numNodes" in e for e in errors(wrong_type))
    assert any("runtimeRef" in e for e in errors(no_runtime))


def test_each_node_launches_torchrun_from_the_runtime_env_with_the_run_and_its_gpus(trainjob):
    trainer = trainjob["spec"]["trainer"]
    assert trainjob["spec"]["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                              "kind": "ClusterTrainingRuntime"}
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    argv = trainer["command"] + trainer["args"]
    assert argv[:4] == ["vidtune", "train", "launch", "--"] and argv[4:7] == ["vidtune", "train", "run"]
    config = json.loads(argv[argv.index("--config") + 1])
    assert config["num_nodes"] == 2 and config["preset"] == "v100-8gpu-t2v-a14b-high-480x832x49"
    assert not any(e["name"].startswith("PET_") for e in trainer["env"])  # the runtime's to set
    env = {e["name"]: e for e in trainer["env"]}
    assert env["VIDTUNE_S3_ENDPOINT"]["valueFrom"]["configMapKeyRef"]["name"] == "vidtune-env"
    pod = trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert pod["name"] == "node"
    spec = pod["template"]["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-V100-SXM2-32GB"}
    assert {v["name"] for v in spec["volumes"]} >= {"dshm", "s3-credentials", "scratch"}
    assert spec["containers"][0]["name"] == "node"
    assert {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]} >= {"/dev/shm", "/var/run/secrets/vidtune/s3"}


def test_a_multi_node_run_is_refused_where_no_trainjob_can_be_made():
    proc = _submit("--nodes", "2")
    assert proc.returncode == 2 and "TrainJob" in proc.stderr
