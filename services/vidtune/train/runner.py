"""One LoRA training run: cache, train, checkpoint, resume. Pure core: no gRPC, no Kubernetes.

`run_training(config, dataset_uri, out_uri, max_steps, progress)` is the single entry point used by the
CLI (`vidtune train run`), the job handler and the demo. Everything a run produces lands below
`out_uri` (a directory or an s3:// prefix); see checkpoint.py for the layout.
"""
from __future__ import annotations

import functools
import gc
import html
import json
import logging
import math
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..platform.errors import FailedPrecondition, InvalidArgument, NotFound
from ..platform.report import Report, new_figure, png_bytes
from ..platform.storage import Storage, join
from . import checkpoint as ckpt
from .config import TrainConfig, load_config
from .dataset import Bucket, Sample, Window, cache_name, clip_windows, load_frames, read_metadata
from .launch import make_accelerator
from .numerics import SkippedSteps, is_finite
from .order import DataOrder
from .sampling import Sampler, cache_prompt_embeddings
from .watchdog import watchdog

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


def _noop_progress(done: int, total: int, message: str = "") -> None:
    pass


@dataclass
class RunPaths:
    """Where a run's outputs live, all derived from the output prefix."""

    out: str
    cache_settings: str

    @property
    def cache(self) -> str:
        return join(self.out, "cache", self.cache_settings)

    @property
    def metrics(self) -> str:
        return join(self.out, "metrics.jsonl")

    @property
    def loss_png(self) -> str:
        return join(self.out, "loss.png")

    def epoch_lora(self, epoch: int) -> str:
        return join(self.out, "checkpoints", f"epoch-{epoch}.safetensors")

    @property
    def final_lora(self) -> str:
        return join(self.out, "lora.safetensors")


def cache_settings(cfg: TrainConfig) -> str:
    dtype = "bf16" if cfg.precision == "bf16" else "fp32"
    tiled = f"-tiled{cfg.vae_tile_size}s{cfg.vae_tile_stride}" if cfg.vae_tiled else ""  # tiles change latents slightly
    if cfg.buckets:
        plan = cfg.bucket_plan()
        extraction = {"slide": f"slide{plan.stride}", "uniform": f"uniform{plan.windows}"}.get(plan.extraction,
                                                                                             plan.extraction)
        area = cfg.bucket_area or cfg.height * cfg.width
        return (f"{cfg.spec.name}-buckets{area}a{cfg.bucket_max_aspect:g}-f{'.'.join(map(str, plan.frames))}"
                f"-{extraction}-{dtype}{tiled}")
    return f"{cfg.spec.name}-{cfg.height}x{cfg.width}x{cfg.num_frames}-{dtype}{tiled}"


# -- caching stage -------------------------------------------------------------------------------------

def build_cache(cfg: TrainConfig, samples: list[Sample], paths: RunPaths, storage: Storage, scratch: Path,
                rank: int = 0, world: int = 1, progress: Progress = _noop_progress,
                check_cancelled: Callable[[], None] = lambda: None) -> dict[str, str]:
    """Encode every sample once (VAE latents + text embeddings) into `<out>/cache/<settings>/<key>.pt`.

    Entries that exist are skipped, so a restarted run only encodes what is missing. A sample that
    cannot be decoded is rejected with its reason in rejected-<rank>.jsonl; the others go on.
    Returns {sample id: reason} of the rejections this process saw.
    """
    from .module import EncoderPlacement, cache_pipeline, encode_prompts, encode_sample, split_text_units, vae_tiling

    settings = paths.cache_settings
    rejected_uri = join(paths.cache, f"rejected-{rank}.jsonl")
    rejected = _read_rejected(storage, rejected_uri)
    mine = [s for i, s in enumerate(samples) if i % world == rank and s.id not in rejected]
    if cfg.buckets:  # a clip is done once its windows are indexed (after its entries are written)
        done = read_windows(paths, storage)
        todo = [s for s in mine if s.id not in done]
    else:
        todo = [s for s in mine if not storage.exists(join(paths.cache, cache_name(s, settings)))]
    if not todo:
        return rejected
    pipe = cache_pipeline(cfg, storage=storage)
    units = pipe.split_pipeline_units(["dit"])[1]
    text_units = split_text_units(units)[0]
    placement = EncoderPlacement(pipe, str(pipe.device), cfg.cache_offload)
    tiling = vae_tiling(cfg)

    def save(item, frames, text) -> None:
        name = cache_name(item, settings)
        if isinstance(item, Window) and storage.exists(join(paths.cache, name)):
            return  # encoded by an attempt that stopped before the clip was indexed
        local = scratch / Path(name).name
        torch.save(encode_sample(pipe, units, frames, item.prompt, cfg.spec.family, text=text, tiling=tiling), local)
        storage.upload(local, join(paths.cache, name))
        local.unlink()

    plan = cfg.bucket_plan() if cfg.buckets else None
    indexed, flushed = {}, time.monotonic()

    def flush_index() -> None:
        # Append-only parts: rewriting one growing index per clip would upload it thousands of times.
        if indexed:
            storage.write_jsonl(join(paths.cache, f"windows-{rank}-{time.time_ns()}.jsonl"),
                                ({"id": k, **v} for k, v in indexed.items()))
            indexed.clear()

    n = 0
    # umT5 encodes a chunk's prompts, then the VAE its clips: with offload the two never share the GPU.
    for start in range(0, len(todo), cfg.cache_text_chunk):
        chunk = todo[start:start + cfg.cache_text_chunk]
        check_cancelled()
        placement.use("text_encoder")
        texts = encode_prompts(pipe, text_units, [s.prompt for s in chunk])
        placement.use("vae")
        for sample, text in zip(chunk, texts):
            check_cancelled()
            n += 1
            save_with_text = functools.partial(save, text=text)
            try:
                if plan is None:
                    save_with_text(sample, _decode(sample, cfg, storage, scratch))
                else:
                    indexed[sample.id] = _cache_windows(sample, plan, storage, scratch, save_with_text)
            except (InvalidArgument, NotFound) as e:  # one corrupt, missing or too short file never fails the run
                _record_rejection(storage, rejected_uri, rejected, sample, e)
                continue
            if time.monotonic() - flushed > 60:
                flush_index()
                flushed = time.monotonic()
            progress(n, len(todo), f"caching latents and text embeddings {n}/{len(todo)}")
    flush_index()
    del pipe, placement
    gc.collect()
    return rejected


def _cache_windows(sample: Sample, plan, storage: Storage, scratch: Path, save) -> dict:
    """Encode every window of one clip; returns its index line (bucket and window starts)."""
    def encode(local: Path) -> dict:
        bucket, starts, windows = clip_windows(local, plan, label=sample.uri)
        for start, frames in windows:
            save(Window(sample, bucket, start), frames)
        return {"bucket": bucket.name, "starts": starts}

    return _on_local_copy(sample, storage, scratch, encode)


def read_windows(paths: RunPaths, storage: Storage) -> dict[str, dict]:
    """{clip id: {bucket, starts}} from every index part of the bucketed cache (all ranks, all attempts)."""
    index: dict[str, dict] = {}
    for uri in storage.list(paths.cache + "/", recursive=False):
        if Path(uri).name.startswith("windows-"):
            index.update({r["id"]: {"bucket": r["bucket"], "starts": r["starts"]} for r in storage.read_jsonl(uri)})
    return index


def bucket_windows(samples: list[Sample], paths: RunPaths, storage: Storage) -> list[Window]:
    """The training windows of the bucketed cache, in dataset order then frame order."""
    index = read_windows(paths, storage)
    return [Window(s, Bucket.parse(index[s.id]["bucket"]), start)
            for s in samples if s.id in index for start in index[s.id]["starts"]]


def _bucket_groups(items: list[Window]) -> tuple[int, ...]:
    names = sorted({w.bucket.name for w in items})
    return tuple(names.index(w.bucket.name) for w in items)


def bucket_table(items: list[Window]) -> list[dict]:
    """Per bucket: the clips, windows and frames it holds (the dataset report's bucket table)."""
    rows: dict[str, dict] = {}
    for w in items:
        row = rows.setdefault(w.bucket.name, {"bucket": w.bucket.name, "clips": set(), "windows": 0, "frames": 0})
        row["clips"].add(w.sample.id)
        row["windows"] += 1
        row["frames"] += w.bucket.frames
    return [{**r, "clips": len(r["clips"])} for _, r in sorted(rows.items())]


def _decode(sample: Sample, cfg: TrainConfig, storage: Storage, scratch: Path):
    """Frames of a sample, cropped to the one configured size (buckets off)."""
    return _on_local_copy(sample, storage, scratch, lambda local: load_frames(local, cfg.height, cfg.width,
                                                                               cfg.num_frames))


def _on_local_copy(sample: Sample, storage: Storage, scratch: Path, fn, attempts: int = 2):
    """`fn(local path)` on a local copy of a sample. A failure is retried once on a fresh copy, since the
    decoder's probe can time out on a loaded machine and a rejection is permanent for the run."""
    for attempt in range(attempts):
        try:
            with storage.local_copy(sample.uri, scratch) as local:
                try:
                    return fn(local)
                except InvalidArgument as e:  # name the sample's URI, not a temporary copy
                    raise InvalidArgument(str(e).replace(str(local), sample.uri)) from None
        except InvalidArgument:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


def _record_rejection(storage: Storage, uri: str, rejected: dict[str, str], sample: Sample, error: Exception) -> None:
    rejected[sample.id] = f"{type(error).__name__}: {error}"
    storage.write_jsonl(uri, ({"id": k, "reason": v} for k, v in rejected.items()))
    log.warning("sample %s rejected: %s", sample.id, rejected[sample.id])


class DecodingReader:
    """Frames for training without the cache, decoded when a sample's step comes.

    An undecodable sample is rejected (recorded as the caching stage does) and the next decodable sample
    in dataset order takes its place. Every rank thus runs the same micro-steps, and a resumed run, which
    skips the recorded rejections, makes the same substitutions.
    """

    def __init__(self, cfg: TrainConfig, samples: list[Sample], paths: RunPaths, storage: Storage, scratch: Path,
                 rank: int):
        self.cfg, self.samples, self.storage, self.scratch = cfg, samples, storage, scratch
        self.rejected_uri = join(paths.cache, f"rejected-{rank}.jsonl")
        self.own_rejected = _read_rejected(storage, self.rejected_uri)
        self.known_rejected = set(all_rejected(paths, storage))

    def __call__(self, index: int) -> tuple[Sample, torch.Tensor]:
        n = len(self.samples)
        for k in range(n):
            sample = self.samples[(index + k) % n]
            if sample.id in self.known_rejected:
                continue
            try:
                return sample, _decode(sample, self.cfg, self.storage, self.scratch)
            except (InvalidArgument, NotFound) as e:
                _record_rejection(self.storage, self.rejected_uri, self.own_rejected, sample, e)
                self.known_rejected.add(sample.id)
        raise FailedPrecondition(f"dataset {self.cfg.dataset}: every sample was rejected ({n}); "
                                 f"see {self.rejected_uri}")


def _read_rejected(storage: Storage, uri: str) -> dict[str, str]:
    if not storage.exists(uri):
        return {}
    return {r["id"]: r["reason"] for r in storage.read_jsonl(uri)}


def all_rejected(paths: RunPaths, storage: Storage) -> dict[str, str]:
    out = {}
    for uri in storage.list(paths.cache):
        if Path(uri).name.startswith("rejected-"):
            out.update(_read_rejected(storage, uri))
    return out


class CacheReader:
    """Cache entries by sample, copied from the object store to local disk on first use."""

    def __init__(self, paths: RunPaths, storage: Storage, local_dir: Path):
        self.paths, self.storage, self.local_dir = paths, storage, local_dir

    def __call__(self, item: Sample | Window):
        name = cache_name(item, self.paths.cache_settings)
        uri = join(self.paths.cache, name)
        local = Path(uri) if not uri.startswith("s3://") else self.local_dir / name
        if not local.exists():
            self.storage.download(uri, local)
        return torch.load(local, map_location="cpu", weights_only=True)


# -- metrics ---------------------------------------------------------------------------------------------

def memory_mb(device: str) -> float:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def plot_loss(metrics: list[dict], title: str):
    fig, ax = new_figure(7, 3.5)
    steps = [m["step"] for m in metrics]
    losses = [m["loss"] for m in metrics]
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    if len(losses) >= 5:
        k = max(2, len(losses) // 20)
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, lw=1.6, label=f"mean of {k}")
    held_out = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    if held_out:
        ax.plot(*zip(*held_out), "o-", lw=1.2, ms=3, label="held-out loss (fixed timesteps)")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_title(title)
    ax.legend()
    return fig


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        span = max(1, total_steps - cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / span)
        return 1.0 - t if cfg.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * t))
    return factor


def validation_samples(cfg: TrainConfig, storage: Storage) -> list[Sample]:
    """The held-out samples, their ids marked so they never share a cache entry with a training clip."""
    storage.check(cfg.validation_dataset, "validation_dataset")
    return [Sample(id=f"validation/{s.id}", uri=s.uri, prompt=s.prompt)
            for s in read_metadata(cfg.validation_dataset, storage)]


def validate(module, cfg: TrainConfig, held_out: list[Sample], reader: "CacheReader") -> dict:
    """Mean flow-matching loss of the held-out samples at fixed timesteps, with noise seeded per
    (sample, timestep): the same numbers at every validation, so the curve shows the LoRA changing."""
    k = cfg.validation_timesteps
    fractions = [(j + 0.5) / k for j in range(k)]
    by_fraction = {}
    was_training = module.training
    module.eval()
    for j, fraction in enumerate(fractions):
        losses = [module.fixed_timestep_loss(reader(s), fraction, seed=cfg.seed * 1_000_003 + i * k + j)
                  for i, s in enumerate(held_out)]
        by_fraction[f"{fraction:.3f}"] = sum(losses) / len(losses)
    module.train(was_training)
    return {"val_loss": sum(by_fraction.values()) / k, "val_loss_by_timestep": by_fraction}


def _deepspeed_skipped(engine) -> int:
    """Optimizer steps DeepSpeed skipped so far (fp16 overflow under the dynamic loss scale)."""
    return int(getattr(engine, "skipped_steps", 0))


def _loss_scale(engine) -> float | None:
    optimizer = getattr(engine, "optimizer", None)
    scale = getattr(optimizer, "cur_scale", None) or getattr(optimizer, "loss_scale", None)
    return float(scale) if isinstance(scale, (int, float)) and getattr(engine, "fp16_enabled", lambda: False)() else None


# -- the run ---------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    steps: int
    total_steps: int
    resumed_from: int
    out: str
    lora: str = ""
    lora_comfyui: str = ""
    epochs: dict = field(default_factory=dict)
    metrics: str = ""
    loss_png: str = ""
    report: str = ""
    samples: int = 0
    rejected: int = 0
    final_loss: float = float("nan")
    skipped_steps: int = 0
    buckets: list = field(default_factory=list)

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        if not math.isfinite(out["final_loss"]):
            out["final_loss"] = None  # JSON and protobuf Struct have no NaN
        return out


def run_training(config: TrainConfig | dict | str, dataset_uri: str | None = None, out_uri: str = "",
                 max_steps: int | None = None, progress: Progress | None = None, storage: Storage | None = None,
                 check_cancelled: Callable[[], None] = lambda: None,
                 on_step: Callable[[int, dict], None] | None = None, scratch: str | Path | None = None,
                 on_hang: Callable[[str], None] | None = None) -> dict:
    """Train a LoRA as configured on the dataset, writing everything below `out_uri`.

    Resumes from `<out_uri>/state/latest.json` when present. `max_steps` caps the optimizer steps of
    this run (the sample order and the schedule still span the configured epochs). `progress(done,
    total, message)` is called every step with the loss and learning rate. With `hang_timeout_s` set,
    a rank that makes no progress for that long logs its stacks below `<out_uri>/logs/` and calls
    `on_hang(reason)`, by default ending the process with watchdog.HANG_EXIT_CODE.
    """
    cfg = load_config(config) if not isinstance(config, TrainConfig) else config.validate()
    if dataset_uri:
        cfg.dataset = dataset_uri
    if not cfg.dataset:
        raise InvalidArgument("no dataset: give a directory or s3:// prefix with metadata.csv")
    if not out_uri:
        raise InvalidArgument("no output location: give a directory or s3:// prefix")
    storage = storage or Storage()
    progress = progress or _noop_progress
    dog = watchdog(cfg.hang_timeout_s, out_uri, int(os.environ.get("RANK", 0)), storage, on_hang)
    try:
        with tempfile.TemporaryDirectory(dir=scratch, prefix="vt-train-") as tmp:
            return _run(cfg, out_uri, max_steps if max_steps is not None else (cfg.max_steps or None), progress,
                        storage, check_cancelled, on_step, Path(tmp), dog).as_dict()
    finally:
        dog.close()


def _run(cfg: TrainConfig, out: str, max_steps: int | None, progress: Progress, storage: Storage,
         check_cancelled, on_step, scratch: Path, dog) -> RunResult:
    accelerator = make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(cfg.seed + rank)  # before any model is built, cached or not
    main = accelerator.is_main_process
    paths = RunPaths(out, cache_settings(cfg))
    samples = read_metadata(cfg.dataset, storage)
    if main:
        storage.write_text(join(out, "config.json"), json.dumps(cfg.to_dict(), indent=2, default=str))

    # 1. caching stage: encoders run once per sample, then leave memory before the DiT arrives.
    rejected: dict[str, str] = {}
    if cfg.use_cache:
        dog.beat("caching")

        def caching_progress(done: int, total: int, message: str = "") -> None:
            dog.beat("caching", done)
            progress(done, total, message)

        build_cache(cfg, samples, paths, storage, scratch, rank, world, caching_progress, check_cancelled)
        accelerator.wait_for_everyone()
        rejected = all_rejected(paths, storage)
        samples = [s for s in samples if s.id not in rejected]
    held_out: list = []
    if cfg.validation_dataset:
        held_out = validation_samples(cfg, storage)
        dog.beat("caching held-out clips")
        build_cache(cfg, held_out, paths, storage, scratch, rank, world, caching_progress, check_cancelled)
        accelerator.wait_for_everyone()
        held_out = [s for s in held_out if s.id not in all_rejected(paths, storage)]
    # With buckets a training item is one window of a clip; without, one clip (its first frames).
    items: list = bucket_windows(samples, paths, storage) if cfg.buckets else samples
    if cfg.buckets and held_out:
        held_out = bucket_windows(held_out, paths, storage)
    prompts = []
    if cfg.sample_prompts:
        dog.beat("caching the sample prompts")
        prompts = cache_prompt_embeddings(cfg, paths.cache, storage, scratch, main)
        accelerator.wait_for_everyone()
    if not items:
        raise FailedPrecondition(f"dataset {cfg.dataset}: every sample was rejected ({len(rejected)}); "
                                 f"see {paths.cache}/rejected-*.jsonl")
    buckets = bucket_table(items) if cfg.buckets else []
    groups = _bucket_groups(items) if cfg.buckets else ()
    order = DataOrder(len(items), cfg.dataset_repeat, cfg.seed, cfg.epochs, cfg.gradient_accumulation_steps, world,
                      groups=groups)
    total = order.total_steps

    # 2. model, optimizer, schedule
    from .module import WanLoraTrainingModule

    dog.beat("loading the model")
    torch.manual_seed(cfg.seed + rank)
    model = WanLoraTrainingModule(cfg, with_encoders=not cfg.use_cache, storage=storage)
    optimizer = torch.optim.AdamW(model.trainable_modules(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total))
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    deepspeed = cfg.deepspeed_stage > 0
    if not deepspeed:
        # Only LoRA tensors go into the state; the frozen base comes from the weights on resume.
        def keep_trainable(models, weights, _dir):
            for i, m in enumerate(models):
                names = accelerator.unwrap_model(m).trainable_param_names()
                weights[i] = {k: v for k, v in weights[i].items() if k in names}
        accelerator.register_save_state_pre_hook(keep_trainable)

    # 3. resume
    start, metrics = 0, []
    state = ckpt.latest_state(out, storage)
    if state is not None:
        local, trainer_state = ckpt.fetch_state(state, storage, scratch / "resume")
        if trainer_state.get("fingerprint") != cfg.fingerprint() or trainer_state.get("n_samples") != len(items):
            raise FailedPrecondition(f"{out} holds a run with another config or dataset "
                                     f"(state at step {state['step']}); use a new output location")
        kwargs = {"load_module_strict": False} if deepspeed else {"strict": False}
        accelerator.load_state(str(local), **kwargs)
        start = int(trainer_state["step"])
        shutil.rmtree(local, ignore_errors=True)
        if storage.exists(paths.metrics):
            metrics = [m for m in storage.read_jsonl(paths.metrics) if m["step"] <= start]
        log.info("resuming %s at step %d of %d", out, start, total)
    resumed_from = start
    end = min(total, start + max_steps) if max_steps else total
    if end > total:
        end = total

    reader = CacheReader(paths, storage, scratch / "cache") if cfg.use_cache else None
    decoder = None if cfg.use_cache else DecodingReader(cfg, samples, paths, storage, scratch, rank)
    unwrapped = accelerator.unwrap_model(model)
    sampler = Sampler(cfg, prompts, paths.cache, out, storage, scratch, rank, world) if prompts else None
    result = RunResult(steps=start, total_steps=total, resumed_from=resumed_from, out=out,
                       samples=len(items), rejected=len(rejected), buckets=buckets)
    if metrics:  # a resumed (or already finished) run reports the loss it reached, not NaN
        result.final_loss = float(metrics[-1]["loss"])
    epochs_written: dict[int, str] = {}

    def save_lora(uri: str, step: int, epoch: int) -> dict:
        state_dict = accelerator.get_state_dict(model)
        if not main:
            return {}
        lora = unwrapped.lora_state_dict(state_dict)
        return ckpt.write_lora(lora, uri, storage, scratch, cfg.lora_rank, cfg.lora_alpha, {
            "format": "vidtune-lora", "model": cfg.spec.name, "role": cfg.expert_role, "step": step,
            "epoch": epoch, "rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "targets": cfg.lora_targets})

    def flush(step: int) -> None:
        if main and metrics:
            storage.write_jsonl(paths.metrics, metrics)

    def save_state(step: int) -> None:
        dog.beat("saving the state", step)
        local = scratch / f"state-{step}"
        kwargs = {"exclude_frozen_parameters": True} if deepspeed else {}
        accelerator.save_state(str(local), **kwargs)
        if main:
            ckpt.publish_state(local, out, step, storage, cfg.keep_states, {
                "step": step, "total_steps": total, "fingerprint": cfg.fingerprint(), "n_samples": len(items),
                "order": {"seed": cfg.seed, "repeat": cfg.dataset_repeat, "epochs": cfg.epochs,
                          "grad_accum": cfg.gradient_accumulation_steps, "world_size": world}})
            if metrics:
                storage.write_bytes(paths.loss_png, png_bytes(plot_loss(metrics, f"{cfg.spec.name} LoRA")),
                                    "image/png")
        accelerator.wait_for_everyone()
        shutil.rmtree(local, ignore_errors=True)

    # 4. train
    model.train()
    last_flush = time.monotonic()
    last_saved = start
    guard = SkippedSteps(cfg.max_skipped_steps_in_row, total=sum(1 for m in metrics if m.get("skipped")))
    for step in range(start, end):
        dog.beat("training", step)
        check_cancelled()
        t0 = time.perf_counter()
        micro_losses, trained_ids = [], []
        ids = order.step_samples(step, rank)
        ds_skipped_before = _deepspeed_skipped(model) if deepspeed else 0
        nonfinite = False
        for index in ids:
            with accelerator.accumulate(model):
                if cfg.use_cache:
                    sample = items[index]
                    loss = model(cached=reader(sample))
                else:
                    sample, frames = decoder(index)
                    loss = model(frames=frames, prompt=sample.prompt)
                trained_ids.append(sample.id)
                # DeepSpeed's fp16 loss scaler finds the overflow in the gradients and skips the step
                # itself; elsewhere a non-finite loss never reaches the gradients.
                finite = is_finite(loss)
                nonfinite |= not finite
                if finite or (deepspeed and cfg.precision == "fp16"):  # the scaler must see the overflow
                    accelerator.backward(loss)
                if accelerator.sync_gradients and not deepspeed:
                    if cfg.max_grad_norm > 0 and not nonfinite:
                        norm = accelerator.clip_grad_norm_(unwrapped.trainable_modules(), cfg.max_grad_norm)
                        nonfinite = not is_finite(norm)
                    if not nonfinite:
                        optimizer.step()
                elif deepspeed:
                    optimizer.step()
                optimizer.zero_grad()
            micro_losses.append(float(loss.detach().float()))
        fp16_scaled = deepspeed and cfg.precision == "fp16"
        skipped = _deepspeed_skipped(model) > ds_skipped_before if fp16_scaled else nonfinite
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        dt = time.perf_counter() - t0
        done = step + 1
        loss_value = sum(micro_losses) / len(micro_losses)
        guard.record(skipped)
        loss_scale = _loss_scale(model) if deepspeed else None
        # This rank's samples as trained (a substitute where one was rejected), the others' as scheduled.
        all_ids = [sid for r in range(world) for sid in
                   (trained_ids if r == rank else [items[i].id for i in order.step_samples(step, r)])]
        entry = {"step": done, "epoch": order.sample_at(step * order.per_step)[0], "loss": loss_value, "lr": lr,
                 "step_time_s": round(dt, 4), "samples_per_s": round(order.per_step / dt, 3),
                 "memory_mb": round(memory_mb(cfg.device), 1), "samples": all_ids}
        if loss_scale is not None:
            entry["loss_scale"] = loss_scale
        if skipped:
            entry.update(skipped=True, skipped_in_row=guard.in_row, skipped_total=guard.total)
            log.warning("step %d skipped: non-finite loss or gradients (loss %s, %d in a row%s)", done,
                        loss_value, guard.in_row, f", loss scale {loss_scale:g}" if loss_scale is not None else "")
        metrics.append(entry)
        result.steps, result.final_loss, result.skipped_steps = done, loss_value, guard.total
        if held_out and (done % cfg.validation_every_steps == 0 or done == end):
            dog.beat("validating", done)
            entry.update(validate(unwrapped, cfg, held_out, reader))
        if sampler is not None and (done % cfg.sample_every_steps == 0 or done == end):
            dog.beat("generating samples", done)
            entry["generated"] = sampler(unwrapped, done)
            accelerator.wait_for_everyone()
        val = f" val_loss={entry['val_loss']:.4f}" if "val_loss" in entry else ""
        progress(done, total, f"loss={loss_value:.4f}{val} lr={lr:.2e} {entry['samples_per_s']:.2f} samples/s")
        completed = order.epochs_completed(done)
        prev_completed = order.epochs_completed(step)
        if completed > prev_completed and (completed % cfg.save_every_epochs == 0 or completed == cfg.epochs):
            uris = save_lora(paths.epoch_lora(completed - 1), done, completed - 1)
            if main:
                epochs_written[completed - 1] = uris["diffsynth"]
        if done % cfg.save_every_steps == 0 or done == end:
            flush(done)
            save_state(done)
            last_saved = done
            last_flush = time.monotonic()
        elif time.monotonic() - last_flush > 5:
            flush(done)
            last_flush = time.monotonic()
        if guard.limit and guard.in_row >= guard.limit:
            flush(done)
        guard.check(done, loss_scale, last_saved)
        if on_step is not None:
            on_step(done, entry)

    # 5. final artefacts (every process takes the same branch: saving may gather across ranks)
    dog.beat("writing the results", result.steps)
    if decoder is not None:
        accelerator.wait_for_everyone()
        rejected = all_rejected(paths, storage)
        result.rejected = len(rejected)
    if end > resumed_from or not storage.exists(paths.final_lora):
        save_lora(paths.final_lora, result.steps, order.epochs_completed(result.steps))
    result.lora = paths.final_lora
    result.lora_comfyui = paths.final_lora.replace(".safetensors", ".comfyui.safetensors")
    flush(result.steps)
    if main:
        if not metrics and storage.exists(paths.metrics):
            metrics = storage.read_jsonl(paths.metrics)
        result.epochs = {str(e): paths.epoch_lora(e) for e in range(order.epochs_completed(result.steps))
                         if storage.exists(paths.epoch_lora(e))}
        result.metrics = paths.metrics
        if metrics:
            loss_png = png_bytes(plot_loss(metrics, f"{cfg.spec.name} LoRA"))  # drawn once: file and report
            storage.write_bytes(paths.loss_png, loss_png, "image/png")
            result.loss_png = paths.loss_png
            result.report = write_report(cfg, result, metrics, rejected, storage, loss_png)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _relative(uri: str, out: str) -> str:
    return uri[len(out.rstrip("/")) + 1:] if uri.startswith(out.rstrip("/") + "/") else uri


def write_report(cfg: TrainConfig, result: RunResult, metrics: list[dict], rejected: dict, storage: Storage,
                 loss_png: bytes) -> str:
    """The human-facing summary of a run: loss curve, throughput and where the checkpoints are."""
    rep = Report(f"LoRA training: {cfg.spec.name}")
    rep.paragraph(f"{result.steps} of {result.total_steps} steps on {result.samples} samples "
                  f"({result.rejected} rejected), {cfg.height}x{cfg.width}x{cfg.num_frames}, "
                  f"rank {cfg.lora_rank}, precision {cfg.precision}.")
    rep.figure(loss_png, "Flow-matching loss per step", name="loss")
    times = sorted(m["step_time_s"] for m in metrics)
    rep.table(["measure", "value"], [
        ["final loss", f"{result.final_loss:.4f}"],
        ["median step time (s)", f"{times[len(times) // 2]:.3f}"],
        ["peak memory (MB)", f"{max(m['memory_mb'] for m in metrics):.0f}"],
        ["resumed from step", result.resumed_from],
        ["skipped steps (non-finite)", result.skipped_steps],
    ])
    rep.bullets([f"LoRA (DiffSynth): {result.lora}", f"LoRA (ComfyUI): {result.lora_comfyui}",
                 *[f"epoch {e}: {u}" for e, u in result.epochs.items()]])
    if result.buckets:
        area = cfg.bucket_area or cfg.height * cfg.width
        rep.heading("Dataset buckets")
        rep.paragraph(f"Each clip trains at the size nearest its aspect ratio at {area} pixels per frame, as windows of "
                      f"the longest of {cfg.bucket_frames or cfg.num_frames} frames it fills "
                      f"({cfg.frame_extraction} extraction); an epoch draws its steps bucket by bucket.")
        rep.table(["bucket (HxWxF)", "clips", "windows (samples)", "frames"],
                  [[b["bucket"], b["clips"], b["windows"], b["frames"]] for b in result.buckets])
    sampled = [m for m in metrics if m.get("generated")]
    if sampled:
        rep.heading("Samples during training")
        rep.paragraph(f"The prompts of {cfg.sample_prompts} generated every {cfg.sample_every_steps} steps with the LoRA "
                      f"as it was, seed {cfg.sample_seed}, {cfg.sample_steps} steps, guidance {cfg.sample_cfg_scale:g}.")
        for m in sampled:
            rel = [(g, _relative(g["sheet"], result.out), _relative(g["video"], result.out)) for g in m["generated"]]
            rep.raw_html(f"<h3>step {m['step']}</h3>" + "".join(
                f'<figure><a href="{html.escape(v)}"><img src="{html.escape(i)}" alt="{html.escape(g["prompt_id"])}"></a>'
                f'<figcaption>{html.escape(g["prompt_id"])}: {html.escape(g["prompt"])}</figcaption></figure>'
                for g, i, v in rel), markdown=f"### step {m['step']}\n\n" + "\n".join(
                f"![{g['prompt_id']}]({i}) [video]({v})" for g, i, v in rel))
    validations = [m for m in metrics if "val_loss" in m]
    if validations:
        rep.heading("Validation")
        rep.paragraph(f"Loss of the held-out clips ({cfg.validation_dataset}) at {cfg.validation_timesteps} fixed "
                      f"timesteps with seeded noise, every {cfg.validation_every_steps} steps.")
        columns = list(validations[0]["val_loss_by_timestep"])
        rep.table(["step", "held-out loss", *[f"t={c}" for c in columns]],
                  [[m["step"], f"{m['val_loss']:.4f}", *[f"{m['val_loss_by_timestep'][c]:.4f}" for c in columns]]
                   for m in validations])
    if rejected:
        rep.heading("Rejected samples")
        rep.table(["sample", "reason"], [[k, v] for k, v in rejected.items()])
    rep.write(result.out, storage, stem="report", data={"config": cfg.to_dict(), "result": result.as_dict()})
    return join(result.out, "report.html")
