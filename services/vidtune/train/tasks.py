"""Training job kinds: map a submitted spec onto the runner.

Spec: {"preset": name, "config": {field: value} or YAML text, "dataset": DIR_OR_URI,
"output": DIR_OR_URI, "max_steps": int}. The output prefix holds the run's state, so a job whose pod
or process died resumes at the step of its last saved state when it runs again.
"""
from __future__ import annotations

import yaml

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.jobs import JobContext

from .config import TrainConfig, load_config


def spec_errors(spec: dict) -> list[str]:
    errors = []
    if not spec.get("dataset"):
        errors.append("dataset: give the dataset directory or s3:// prefix (with metadata.csv)")
    if not spec.get("output"):
        errors.append("output: give the run's output directory or s3:// prefix")
    return errors


def config_of(spec: dict) -> TrainConfig:
    """The validated config a spec describes: preset, then the config mapping/YAML on top."""
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
    errors = spec_errors(ctx.spec)
    if errors:
        raise InvalidArgument("; ".join(errors))
    from .runner import run_training

    cfg = config_of(ctx.spec)
    out = ctx.spec["output"]
    ctx.set_result(output=out, metrics=f"{out.rstrip('/')}/metrics.jsonl")
    max_steps = int(ctx.spec.get("max_steps") or 0) or None
    return run_training(cfg, cfg.dataset, out, max_steps=max_steps, progress=ctx.progress, storage=ctx.storage,
                        check_cancelled=ctx.check_cancelled, scratch=ctx.scratch)


HANDLERS = {"train.run": train_run}
