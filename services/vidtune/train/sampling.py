"""Samples during training: fixed prompts generated every `sample_every_steps` with the LoRA as it is.

The video comes from DiffSynth's own WanVideoPipeline call on the pipeline being trained (its DiT with the
live PEFT LoRA), seeded, so two samplings of one prompt differ only by what the LoRA learned in between.
The text encoder never returns for this: the prompts' embeddings are made once in the caching stage and a
pipeline unit hands them over in place of the encoder. Only the VAE is loaded, for the duration of a sampling.

Each sample lands at `<out>/samples/step-NNNNNNNN/<prompt id>-seed-<seed>.mp4`, with a PNG strip of its
frames beside it (`.png`); the step's metrics line lists them under `generated`.
"""
from __future__ import annotations

import gc
import hashlib
from pathlib import Path

import torch

from ..platform.storage import Storage, join
from .config import TrainConfig

FPS = 16


def prompt_cache_uri(cache: str, text: str) -> str:
    return join(cache, "prompts", hashlib.sha256(text.encode()).hexdigest()[:24] + ".pt")


def sample_uri(out: str, step: int, prompt_id: str, seed: int) -> str:
    return join(out, "samples", f"step-{step:08d}", f"{prompt_id}-seed-{seed}.mp4")


def load_sample_prompts(cfg: TrainConfig, storage: Storage):
    from ..evaluate.prompts import load_prompts

    storage.check(cfg.sample_prompts, "sample_prompts")
    return load_prompts(cfg.sample_prompts, storage)


def _texts(cfg: TrainConfig, prompts) -> list[str]:
    return sorted({p.prompt for p in prompts} | ({""} if cfg.sample_cfg_scale != 1 else set()))


def cache_prompt_embeddings(cfg: TrainConfig, cache: str, storage: Storage, scratch: Path, main: bool):
    """The sample prompts, their text embeddings (and the empty negative prompt's, for guidance) cached once
    below `cache`; the main process encodes what is missing while the text encoder is loaded anyway."""
    from diffsynth.pipelines.wan_video import WanVideoUnit_PromptEmbedder

    from .module import cache_pipeline

    prompts = load_sample_prompts(cfg, storage)
    missing = [t for t in _texts(cfg, prompts) if not storage.exists(prompt_cache_uri(cache, t))] if main else []
    if missing:
        pipe = cache_pipeline(cfg, storage=storage)
        unit = WanVideoUnit_PromptEmbedder()
        for text in missing:
            with torch.no_grad():
                context = unit.encode_prompt(pipe, text).detach().cpu()
            local = scratch / "prompt-embedding.pt"
            torch.save(context, local)
            storage.upload(local, prompt_cache_uri(cache, text))
            local.unlink()
        del pipe
        gc.collect()
    return prompts


class Sampler:
    """Generates the fixed prompts (this process's share of them) with the module's pipeline."""

    def __init__(self, cfg: TrainConfig, prompts, cache: str, out: str, storage: Storage, scratch: Path,
                 rank: int = 0, world: int = 1):
        from ..evaluate.generate import GenerationSettings

        h, w, f = cfg.sample_shape
        self.settings = GenerationSettings(model=cfg.spec.name, seeds=[cfg.sample_seed], height=h, width=w,
                                           num_frames=f, steps=cfg.sample_steps, cfg_scale=cfg.sample_cfg_scale,
                                           fps=FPS)
        self.settings.validate()
        self.cfg, self.prompts, self.out, self.storage, self.scratch = cfg, prompts, out, storage, scratch
        self.rank, self.world = rank, world
        self.contexts = {}
        for text in _texts(cfg, prompts):
            with storage.local_copy(prompt_cache_uri(cache, text), scratch) as local:
                self.contexts[text] = torch.load(local, map_location="cpu", weights_only=True)

    def records(self, step: int) -> list[dict]:
        """What a sampling at `step` writes, for every prompt (all processes' shares)."""
        seed = self.cfg.sample_seed
        return [{"prompt_id": p.id, "prompt": p.prompt, "seed": seed, "video": (v := sample_uri(self.out, step, p.id, seed)),
                 "sheet": v.removesuffix(".mp4") + ".png"} for p in self.prompts]

    def __call__(self, module, step: int) -> list[dict]:
        """Generate this process's prompts at `step`; an existing sample (a resumed step) is kept."""
        from diffsynth.pipelines.wan_video import WanVideoUnit_PromptEmbedder

        from ..evaluate.generate import run_pipeline
        from ..evaluate.videoio import contact_sheet, write_mp4
        from ..models.loading import load_pipeline

        mine = [(p, r) for i, (p, r) in enumerate(zip(self.prompts, self.records(step))) if i % self.world == self.rank
                and not self.storage.exists(r["sheet"])]
        if not mine:
            return self.records(step)
        pipe = module.pipe
        vae = load_pipeline(self.cfg.spec, self.cfg.weights, device=str(pipe.device), dtype=pipe.torch_dtype,
                            roles=["vae"], tokenizer=False, storage=self.storage).vae
        units, was_training = pipe.units, module.training
        pipe.units = [_cached_prompt_embedder(self.contexts) if isinstance(u, WanVideoUnit_PromptEmbedder) else u
                      for u in units]
        pipe.vae = vae
        module.eval()
        devices = [torch.cuda.current_device()] if str(pipe.device).startswith("cuda") else []
        try:
            with torch.random.fork_rng(devices=devices):  # training's random numbers stay as they were
                for item, record in mine:
                    frames = run_pipeline(pipe, {"prompt": item.prompt, "seed": record["seed"], "image": item.image},
                                          self.settings, self.storage)
                    local = write_mp4(frames, self.scratch / "sample.mp4", fps=FPS)
                    self.storage.upload(local, record["video"], "video/mp4")
                    local.unlink()
                    label = f"step {step} · {item.id} · seed {record['seed']}"
                    self.storage.write_bytes(record["sheet"], contact_sheet(frames, n=8, label=label), "image/png")
        finally:
            pipe.units, pipe.vae = units, None
            pipe.scheduler.set_timesteps(1000, training=True)  # the call set its own inference schedule
            module.train(was_training)
            del vae
            gc.collect()
        return self.records(step)


def _cached_prompt_embedder(contexts: dict):
    from diffsynth.pipelines.wan_video import WanVideoUnit_PromptEmbedder

    class CachedPromptEmbedder(WanVideoUnit_PromptEmbedder):
        """DiffSynth's prompt unit answering from the embeddings cached in the caching stage."""

        def process(self, pipe, prompt, positive) -> dict:
            return {"context": contexts[prompt].to(device=pipe.device, dtype=pipe.torch_dtype)}

    return CachedPromptEmbedder()

