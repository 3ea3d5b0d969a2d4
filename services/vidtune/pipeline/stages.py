"""The pipeline as data: stage declarations over one work prefix, and the YAML a user edits.

archive -> transcode -> quality -> export -> train -> generate -> score -> compare. Each stage is one job
of a service (its `kind`), whose spec is built from the pipeline settings and the results of the stages
before it; every stage writes below `<work>/<stage>/`. Nothing here runs anything, talks gRPC or touches
storage: `runner.py` does that, so the graph can be read, printed and tested on its own.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from typing import Callable

import yaml

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.shards import shard_spec
from vidtune.platform.storage import join

# Pods of a fanned-out stage's Indexed Job: every item of the stage goes to one of them.
SHARDS = ("shards", 4, "pods of this stage's Indexed Job with --backend kubernetes, each doing every N-th item "
                       "(1: one pod; runs on one machine ignore it)")
MAX_SHARDS = 1000

# Settings per stage: (key, default, what it means). `init` prints them as commented YAML.
SETTINGS: dict[str, list[tuple[str, object, str]]] = {
    "transcode": [
        ("profile", "wan-720p", "output canvas: wan-720p 1280x720, wan-704p 1280x704@24, wan-480p 832x480@16"),
        ("fps", 0.0, "output frame rate (0: the profile's)"),
        ("max_duration", 0.0, "seconds kept per clip (0: the profile's)"),
        ("workers", 2, "inputs transcoded at once"),
        SHARDS,
    ],
    "quality": [
        ("rules", "", "rules YAML (empty: the defaults; `vidtune quality rules` prints them)"),
        ("mapping", "", "mapping file: manifest field -> label field (docs/formats.md)"),
        ("probe", True, "probe and score the clips (file, duplicate and score rules need it)"),
        ("val_ratio", 0.1, "share of rows held out for validation (metadata_val.csv)"),
        ("seed", 0, "seed of the train/val split"),
        ("workers", 2, "media probed at once"),
        SHARDS,
    ],
    "export": [
        ("max_tokens", 512, "caption budget per prompt (whole sentences kept)"),
        ("workers", 4, "media copied at once"),
    ],
    "train": [
        ("preset", "cpu-tiny", "named preset (`vidtune train presets`)"),
        ("config", {}, "training config fields over the preset (`vidtune train config` lists them)"),
        ("max_steps", 0, "stop after this many steps (0: every epoch)"),
    ],
    "generate": [
        ("prompts", "", "prompt set (docs/formats.md); empty: one caption per category from the clean rows"),
        ("max_prompts", 3, "prompts taken from the clean rows when `prompts` is empty"),
        ("model", "tiny-ti2v", "model spec the samples are generated with (must match the trained one)"),
        ("weights", "", "model weights root (empty for tiny models)"),
        ("seeds", [0, 1], "samples per prompt and checkpoint"),
        ("height", 64, ""), ("width", 64, ""),
        ("num_frames", 17, "4n+1"),
        ("steps", 4, "denoising steps"),
        SHARDS[:2] + ("GPU pods of the generation's Indexed Job with --backend kubernetes, one GPU each, each "
                      "generating every N-th (checkpoint, prompt, seed) video (1: one pod)",),
    ],
    "score": [
        ("clip_weights", "", "CLIP bundle directory or file (docs/formats.md)"),
        ("i3d", "", "I3D TorchScript for FVD (docs/formats.md)"),
        ("tiny_metric_models", False, "build tiny random CLIP and I3D models instead (tests, demos: "
                                      "the scores are then meaningless)"),
        ("reference", "", "reference clips for FVD; empty: the clean transcoded clips"),
        ("fvd_size", 224, "frame size the I3D model sees"),
    ],
    "compare": [
        ("baseline", "base", "checkpoint every other is compared with"),
    ],
}
STAGE_NAMES = tuple(SETTINGS)
# `--until` names the stage a run stops after; export belongs with quality for a user.
UNTIL = ("transcode", "quality", "export", "train", "generate", "score", "compare")


def _call(module: str, name: str) -> Callable:
    """A function of a service module, imported when first called (reading the graph imports no service)."""
    return lambda *args: getattr(importlib.import_module(module), name)(*args)


@dataclass(frozen=True)
class FanOut:
    """How a per-item stage spreads over the pods of one Indexed Job on a cluster (the stage's `shards`).

    Pod i of n runs `kind` on `shard(spec, i, n)`: items[i::n] of the stage, through the same handler as a
    local run, each shard writing only its own outputs (outputs keyed by input and settings, so a retried
    pod skips what it finished). Then `merge(storage, spec, n)` makes the stage's result from the shards'
    outputs, in the order of one unsharded run; with no `merge` the stage's own job runs after the shards
    and finds every item done (quality: the probe cache), so it is the merge.
    """

    kind: str
    shard: Callable[[dict, int, int], dict] = shard_spec
    merge: Callable | None = None
    wanted: Callable[[dict], bool] = lambda spec: True   # whether this spec has per-item work to spread


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: which job it is and how its spec is made.

    `spec(p, results)` gets the pipeline (labels, media_root, work, settings) and the results of the
    stages before it (outputs are at fixed places below <work>, so only ids such as a manifest version
    come from results), and returns the job spec; `request` names the Submit RPC and the request message
    the spec becomes when the stage is submitted to its service.
    """

    name: str
    service: str
    kind: str
    spec: Callable[["Pipeline", dict], dict]
    rpc: tuple[str, str]                 # (Submit method, request message)
    prepare: str = ""                    # an input the runner writes before the job: see runner.PREPARE
    fanout: FanOut | None = None         # per-item work: an Indexed Job on a cluster
    # What the spec of a later stage needs of this stage's result before it has run (for --dry-run): the
    # fields at fixed places below <work>, and a placeholder naming where `pipeline run` finds the others.
    expected: Callable[["Pipeline"], dict] | None = None
    # The spec as a pod on a cluster runs it (generation: on the GPU its pod holds), shards included.
    on_cluster: Callable[[dict], dict] | None = None


@dataclass
class Pipeline:
    labels: str
    media_root: str
    work: str
    settings: dict[str, dict]

    def out(self, stage: str, *parts: str) -> str:
        return join(self.work, stage, *parts)

    def get(self, stage: str, key: str):
        return self.settings[stage][key]


# Settings that name a file, directory or prefix to read (empty: not used); train's come from its config.
LOCATION_SETTINGS = {"quality": ("rules", "mapping"), "generate": ("prompts", "weights"),
                     "score": ("clip_weights", "i3d", "reference")}


def locations(p: Pipeline) -> list[tuple[str, str]]:
    """(setting, value) of every location the pipeline file names: what a run on a cluster must reach."""
    from vidtune.train.locations import config_locations

    out = [("labels", p.labels), ("media_root", p.media_root), ("work", p.work)]
    tiny_metrics = p.settings["score"]["tiny_metric_models"]
    for stage, keys in LOCATION_SETTINGS.items():
        for key in keys:
            if stage == "score" and key in ("clip_weights", "i3d") and tiny_metrics:
                continue  # built under work instead
            if p.settings[stage][key]:
                out.append((f"{stage}.{key}", str(p.settings[stage][key])))
    named = config_locations(p.settings["train"]["config"] or {})
    return out + [(f"train.config.{key}", v) for key, values in named.items() for v in values]


def check_models(p: Pipeline) -> None:
    """Generation loads the model training trains: a LoRA of another model is refused before any stage runs
    (it would fail only after training)."""
    from vidtune.models.specs import get_spec
    from vidtune.train.presets import preset_config

    train = p.settings["train"]
    trained = (train["config"] or {}).get("model") or preset_config(train["preset"]).model
    generated = p.settings["generate"]["model"]
    if get_spec(trained).name != get_spec(generated).name:
        raise InvalidArgument(f"stages.generate.model {generated!r} is not the model training trains ({trained!r}, "
                              f"from preset {train['preset']!r} and train.config): a LoRA loads only into the "
                              f"model it was trained on; set stages.generate.model: {get_spec(trained).name}")


def _transcode(p: Pipeline, results: dict) -> dict:
    s = p.settings["transcode"]
    return {"inputs": [p.media_root], "output": p.out("transcode"), "profile": s["profile"], "fps": s["fps"],
            "max_duration": s["max_duration"], "workers": s["workers"],
            "report": p.out("transcode", "report.jsonl")}


def _quality(p: Pipeline, results: dict) -> dict:
    s = p.settings["quality"]
    return {"source": p.labels, "root": p.media_root, "output": p.out("quality"), "rules": s["rules"],
            "mapping": s["mapping"], "transcoded": p.out("transcode", "report.jsonl"), "skip_probe": not s["probe"],
            "skip_export": True, "val_ratio": s["val_ratio"], "seed": s["seed"], "workers": s["workers"]}


def _export(p: Pipeline, results: dict) -> dict:
    s = p.settings["export"]
    return {"store": results["quality"]["manifests"], "version": results["quality"]["final_version"],
            "output": p.out("export"), "max_tokens": s["max_tokens"], "workers": s["workers"]}


def _train(p: Pipeline, results: dict) -> dict:
    s = p.settings["train"]
    return {"preset": s["preset"], "config": dict(s["config"] or {}), "dataset": p.out("export"),
            "output": p.out("train"), "max_steps": s["max_steps"]}


def _generate(p: Pipeline, results: dict) -> dict:
    s = p.settings["generate"]
    return {"prompts": s["prompts"] or p.out("generate", "prompts.jsonl"),
            "checkpoints": ["base", p.out("train", "checkpoints") + "/"],
            "output": p.out("generate", "videos"), "model": s["model"], "weights": s["weights"],
            "seeds": list(s["seeds"]), "height": s["height"], "width": s["width"], "num_frames": s["num_frames"],
            "steps": s["steps"]}


def _score(p: Pipeline, results: dict) -> dict:
    s = p.settings["score"]
    tiny = s["tiny_metric_models"]
    return {"videos": p.out("generate", "videos") + "/", "output": p.out("score"),
            "clip_weights": p.out("score", "models", "clip") if tiny else s["clip_weights"],
            "i3d": p.out("score", "models", "i3d_torchscript.pt") if tiny else s["i3d"],
            "reference": s["reference"] or p.out("score", "reference.jsonl"), "fvd_size": s["fvd_size"]}


def _compare(p: Pipeline, results: dict) -> dict:
    return {"scores": [p.out("score")], "output": p.out("compare"),
            "baseline": p.settings["compare"]["baseline"]}


def _on_gpu(spec: dict) -> dict:
    # A generation pod holds one GPU: its pipeline runs there unless the spec names a device.
    return {**spec, "device": spec.get("device") or "cuda"}


def _expected_quality(p: Pipeline) -> dict:
    return {"manifests": p.out("quality", "manifests"),
            "final_version": f"<the quality run's final manifest version: versions.final in "
                             f"{p.out('quality', 'report.json')}>"}


STAGES: tuple[Stage, ...] = (
    Stage("transcode", "transcode", "transcode.batch", _transcode, ("SubmitTranscode", "TranscodeRequest"),
          fanout=FanOut("transcode.batch", _call("vidtune.transcode.tasks", "batch_shard_spec"),
                        _call("vidtune.transcode.tasks", "merge_batch"))),
    # The shards probe into the run's probe cache; the quality.run job after them ingests, finds every
    # probe there, filters, splits and writes the manifests once.
    Stage("quality", "quality", "quality.run", _quality, ("SubmitRun", "RunQualityRequest"),
          fanout=FanOut("quality.probe-shard", wanted=lambda spec: not spec["skip_probe"]), expected=_expected_quality),
    Stage("export", "quality", "quality.export", _export, ("SubmitExport", "ExportRequest")),
    Stage("train", "train", "train.run", _train, ("SubmitTrain", "TrainRequest")),
    Stage("generate", "evaluate", "evaluate.generate", _generate, ("SubmitGenerate", "GenerateRequest"),
          prepare="prompts", on_cluster=_on_gpu,
          fanout=FanOut("evaluate.generate", merge=_call("vidtune.evaluate.tasks", "merge_generate"))),
    Stage("score", "evaluate", "evaluate.score", _score, ("SubmitScore", "ScoreRequest"), prepare="reference"),
    Stage("compare", "evaluate", "evaluate.compare", _compare, ("SubmitCompare", "CompareRequest")),
)


def stages_until(until: str | None) -> tuple[Stage, ...]:
    if until is None:
        return STAGES
    if until not in UNTIL:
        raise InvalidArgument(f"--until {until!r}: expected one of {', '.join(UNTIL)}")
    names = [s.name for s in STAGES]
    return STAGES[: names.index(until) + 1]


def spec_digest(spec: dict, upstream: str = "") -> str:
    """Identifies what a stage was asked to do, on which run of the stage before it (`upstream`: that
    stage's digest and finish time): a finished stage is skipped only when both are the same, so a stage
    that ran again makes every later stage run again."""
    return hashlib.sha256(json.dumps([spec, upstream], sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ the YAML file

def default_settings() -> dict[str, dict]:
    return {stage: {k: v for k, v, _ in rows} for stage, rows in SETTINGS.items()}


def render_yaml(labels: str, media_root: str, work: str) -> str:
    """The pipeline file `vidtune pipeline init` prints: every setting with its default and meaning."""
    def value(v) -> str:
        return yaml.safe_dump(v, default_flow_style=True, allow_unicode=True).strip().removesuffix("\n...")

    lines = ["# vidtune pipeline: archive -> transcode -> quality -> export -> train -> generate -> score -> compare",
             "# Run: vidtune pipeline run --config THIS_FILE [--until STAGE] [--submit --watch]",
             "# Each stage writes below <work>/<stage>/; a re-run skips finished stages and resumes the others.",
             "# labels: a label JSON directory, CSV or JSONL (docs/formats.md); media_root: the folder label",
             "# paths are relative to; work: the directory or s3:// prefix every stage writes below.",
             f"labels: {value(labels)}",
             f"media_root: {value(media_root)}",
             f"work: {value(work)}",
             "stages:"]
    for stage, rows in SETTINGS.items():
        lines.append(f"  {stage}:")
        for key, default, meaning in rows:
            comment = f"  # {meaning}" if meaning else ""
            lines.append(f"    {key}: {value(default)}{comment}")
    return "\n".join(lines) + "\n"


def parse(text: str, origin: str = "pipeline") -> Pipeline:
    """A pipeline file, checked as a whole: unknown stages or settings are errors, missing ones default."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise InvalidArgument(f"{origin}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{origin}: expected a mapping with labels, media_root, work and stages")
    unknown = set(doc) - {"labels", "media_root", "work", "stages"}
    if unknown:
        raise InvalidArgument(f"{origin}: unknown keys {sorted(unknown)}; known: labels, media_root, work, stages")
    missing = [k for k in ("labels", "media_root", "work") if not doc.get(k)]
    if missing:
        raise InvalidArgument(f"{origin}: {', '.join(missing)}: required")
    settings = default_settings()
    given = doc.get("stages") or {}
    if not isinstance(given, dict):
        raise InvalidArgument(f"{origin}: stages: expected a mapping of stage -> settings")
    for stage, values in given.items():
        if stage not in settings:
            raise InvalidArgument(f"{origin}: unknown stage {stage!r}; known: {', '.join(settings)}")
        for key, v in (values or {}).items():
            if key not in settings[stage]:
                raise InvalidArgument(f"{origin}: stages.{stage}: unknown setting {key!r}; "
                                      f"known: {', '.join(settings[stage])}")
            default = settings[stage][key]
            if default is not None and not isinstance(v, type(default)) and not (
                    isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool)):
                raise InvalidArgument(f"{origin}: stages.{stage}.{key}: expected {type(default).__name__}, "
                                      f"got {v!r}")
            if key == "shards" and (isinstance(v, bool) or not 1 <= v <= MAX_SHARDS):
                raise InvalidArgument(f"{origin}: stages.{stage}.shards: expected 1 to {MAX_SHARDS}, got {v!r}")
            settings[stage][key] = float(v) if isinstance(default, float) else v
    nodes = (settings["train"]["config"] or {}).get("num_nodes", 1)
    if nodes not in (1, None) and str(nodes).strip() != "1":  # refused here, not after the stages before training
        raise InvalidArgument(f"{origin}: stages.train.config.num_nodes: a pipeline trains on one node, got {nodes!r}; "
                              f"a multi-node run is a Kubeflow TrainJob (`vidtune train submit --nodes N "
                              f"--backend kubernetes --dry-run`)")
    return Pipeline(str(doc["labels"]), str(doc["media_root"]), str(doc["work"]).rstrip("/"), settings)
