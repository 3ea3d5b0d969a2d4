"""Training job kinds: map a submitted spec onto the runner.

Spec: {"preset": name, "config": {field: value} or YAML text, "dataset": DIR_OR_URI,
"output": DIR_OR_URI, "max_steps": int}. The output prefix holds the run's state, so a job whose pod
or process died resumes at the step of its last saved state when it runs again.
"""
from __future__ import annotations

import copy
import json

import yaml

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.jobs import JobContext
from vidtune.platform.kinds import JobKind, handlers

from .config import TrainConfig, load_config


def spec_errors(spec: dict) -> list[str]:
    errors = []
    if not spec.get("dataset"):
        errors.append("dataset: give the dataset directory or s3:// prefix (with metadata.csv)")
    if not spec.get("output"):
        errors.append("output: give the run's output directory or s3:// prefix")
    if not errors:
        config_of(spec)  # a bad config fails here, where the spec enters, not in the job
    return errors


def config_of(spec: dict) -> TrainConfig:
    """The validated config a spec describes: preset, then the config mapping/YAML on top. Parsed once per
    spec in a process (the servicer, the placement and the handler all ask for it)."""
    key = json.dumps(spec, sort_keys=True, default=str)
    if key not in _configs:
        if len(_configs) > 64:
            _configs.clear()
        _configs[key] = _parse_config(spec)
    return copy.deepcopy(_configs[key])


_configs: dict[str, TrainConfig] = {}


def _parse_config(spec: dict) -> TrainConfig:
    raw = spec.get("config") or {}
    if isinstance(raw, str):
        raw = yaml.safe_load(raw) or {}
        if not isinstance(raw, dict):
            raise InvalidArgument("config: expected a YAML mapping of training config fields")
    data = {"preset": spec["preset"]} if spec.get("preset") else {}
    data.update(raw)
    if spec.get("dataset"):
        data["dataset"] = spec["dataset"]
    return load_config(data)


def train_run(ctx: JobContext) -> dict:
    from .runner import run_training

    cfg = config_of(ctx.spec)
    out = ctx.spec["output"]
    ctx.set_result(output=out, metrics=f"{out.rstrip('/')}/metrics.jsonl")
    max_steps = int(ctx.spec.get("max_steps") or 0) or None
    return run_training(cfg, cfg.dataset, out, max_steps=max_steps, progress=ctx.progress, storage=ctx.storage,
                        check_cancelled=ctx.check_cancelled, scratch=ctx.scratch)


def request_spec(request) -> dict:
    """The job spec of a TrainRequest (typed numbers, empty fields left out)."""
    spec = {"preset": request.preset, "config": request.config_yaml, "dataset": request.dataset,
            "output": request.output, "max_steps": int(request.max_steps), "timeout_s": int(request.timeout_s),
            "backend": request.backend}
    spec = {k: v for k, v in spec.items() if v not in ("", 0)}
    if config_of(spec).num_nodes > 1:  # this service would run it on one node
        raise InvalidArgument("num_nodes > 1: a multi-node run is a Kubeflow TrainJob; print it with `vidtune train "
                              "submit --nodes N --backend kubernetes --dry-run` and apply it with kubectl")
    return spec


def _weights_locations(spec: dict) -> dict[str, list[str]]:
    """The weights, held-out dataset and sample prompts a config names: a remote caller gets the same access
    policy for them as for `dataset`."""
    from .locations import config_locations

    cfg = config_of(spec)
    return {f"config {k}": v for k, v in config_locations(vars(cfg)).items()}


def _placement(record: dict) -> dict:
    from .placement import training_placement

    return training_placement(record)


KINDS = [
    JobKind("train.run", train_run, rpc="SubmitTrain", locations=("dataset", "output"), check=spec_errors,
            to_spec=request_spec, placement=_placement, nested_locations=_weights_locations),
]
HANDLERS = handlers(KINDS)
