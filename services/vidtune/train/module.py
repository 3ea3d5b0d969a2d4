"""The Wan LoRA training module, built from DiffSynth's pieces.

Upstream keeps its Wan trainer in examples only; this is ours. It splits the WanVideoPipeline's units
the way upstream's two-stage training does: the units that do not touch the trained DiT (prompt
embedding, VAE encoding, shape checks) form the caching stage and run once per sample; the rest run
every step, followed by DiffSynth's FlowMatchSFTLoss.
"""
from __future__ import annotations

import torch
from diffsynth.core.vram.initialization import skip_model_initialization
from diffsynth.diffusion import DiffusionTrainingModule, FlowMatchSFTLoss
from diffsynth.models.wan_video_dit import WanModel

from ..models.loading import load_pipeline
from .config import TrainConfig
from .numerics import frozen_linears_to_fp8, modulation_in_fp32
from .timesteps import index_range, one_timestep, pick_index

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Recomputed by the noise initialiser or the loss; never worth storing.
_NOT_CACHED = {"noise", "latents", "input_video", "input_image", "rand_device"}
LORA_PREFIX = "pipe.dit."


def _cacheable(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (bool, int, float, str)) or value is None:
        return True
    if isinstance(value, (tuple, list)):
        return all(isinstance(v, (bool, int, float, str)) for v in value)
    return False


def vae_tiling(cfg: TrainConfig) -> dict:
    """The VAE's tiling inputs of the pipeline units (tile size and step in latent cells)."""
    return {"tiled": cfg.vae_tiled, "tile_size": (cfg.vae_tile_size,) * 2, "tile_stride": (cfg.vae_tile_stride,) * 2}


def raw_inputs(frames, prompt: str, family: str, device: str, tiling: dict | None = None) -> tuple[dict, dict, dict]:
    """Pipeline inputs for one sample, as upstream's Wan trainer builds them (cfg off; untiled unless `tiling`)."""
    shared = {
        "input_video": frames, "height": frames[0].size[1], "width": frames[0].size[0],
        "num_frames": len(frames), "cfg_scale": 1, "rand_device": device,
        "cfg_merge": False, "vace_scale": 1,
        **(tiling or {"tiled": False, "tile_size": (30, 52), "tile_stride": (15, 26)}),
    }
    if family == "ti2v" and len(frames) > 1:
        # TI2V learns to continue a given first frame (upstream `--extra_inputs input_image`).
        shared["input_image"] = frames[0]
    return shared, {"prompt": prompt}, {}


def cache_pipeline(cfg: TrainConfig, storage=None, cache_dir=None):
    """The encoders (umT5 + VAE) for the caching stage.

    They run in fp32 unless training is bf16: umT5 overflows in fp16, and this stage runs once per
    sample, so a V100 run pays fp32 here and never again. With `cache_offload` they are loaded into
    CPU memory and `EncoderPlacement` moves each to the GPU for its turn.
    """
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    device = "cuda" if cfg.device == "cuda" else "cpu"
    pipe = load_pipeline(cfg.spec, cfg.weights, device="cpu" if cfg.cache_offload else device, dtype=dtype,
                         roles=["text_encoder", "vae"], storage=storage, cache_dir=cache_dir)
    pipe.device = device  # where the units put their tensors, wherever the models wait
    # The encoding units read the DiT's switches (fused first frame, CLIP/VAE conditioning) but never
    # run it: the real class with the spec's config and empty (meta) parameters answers them for free.
    with skip_model_initialization():
        pipe.dit = WanModel(**cfg.spec.component(cfg.expert_role).kwargs)
    pipe.scheduler.set_timesteps(1000, training=True)
    return pipe


class EncoderPlacement:
    """Which caching-stage encoder is on the compute device.

    Without offload both stay there. With it, only the one whose turn it is: umT5 (umT5-XXL in fp32 is
    22.7 GB) and the VAE with its activations never share a 32 GB V100.
    """

    ROLES = ("text_encoder", "vae")

    def __init__(self, pipe, device: str, offload: bool):
        self.pipe, self.device, self.offload = pipe, device, offload

    def use(self, role: str) -> None:
        if not self.offload:
            return
        for other in self.ROLES:
            if other != role:
                getattr(self.pipe, other).to("cpu")
        if self.device == "cuda":
            torch.cuda.empty_cache()
        getattr(self.pipe, role).to(self.device)


def split_text_units(units) -> tuple[list, list]:
    """(the units that run only the text encoder, the others), each in pipeline order."""
    text = [u for u in units if tuple(u.onload_model_names or ()) == ("text_encoder",)]
    return text, [u for u in units if all(u is not t for t in text)]


def _trim(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A (1, length, dim) embedding without its all-zero tail (DiffSynth zeroes past the prompt's tokens)."""
    nonzero = t.flatten(2).ne(0).any(-1).any(0).nonzero()
    n = int(nonzero[-1]) + 1 if len(nonzero) else 0
    return t[:, :n].clone(), t.shape[1]


def _untrim(trimmed: tuple[torch.Tensor, int]) -> torch.Tensor:
    t, length = trimmed
    return torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1]))


@torch.no_grad()
def encode_prompts(pipe, text_units, prompts: list[str]) -> list[dict]:
    """The text-encoder outputs of each prompt, kept in CPU memory with their zero padding trimmed off
    (exact: `encode_sample` pads them back), so a chunk of prompts waits cheaply for the VAE's turn."""
    out = []
    for prompt in prompts:
        inputs = ({"cfg_scale": 1, "cfg_merge": False}, {"prompt": prompt}, {})
        for unit in text_units:
            inputs = pipe.unit_runner(unit, pipe, *inputs)
        out.append({k: _trim(v.detach().cpu()) for k, v in inputs[1].items() if isinstance(v, torch.Tensor)})
    return out


@torch.no_grad()
def encode_sample(pipe, units, frames, prompt: str, family: str, text: dict | None = None,
                  tiling: dict | None = None) -> tuple[dict, dict, dict]:
    """Run the caching-stage units on one sample; the result is what the training step needs.

    `text` holds the prompt's embeddings from `encode_prompts`: the text units are then skipped.
    """
    inputs = raw_inputs(frames, prompt, family, str(pipe.device), tiling)
    if text is not None:
        units = split_text_units(units)[1]
        embeddings = {k: _untrim(v).to(pipe.device) for k, v in text.items()}
        for part in inputs[1:]:  # cfg off: the negative side shares the positive embeddings, as in DiffSynth
            part.update(embeddings)
    for unit in units:
        inputs = pipe.unit_runner(unit, pipe, *inputs)
    return tuple({k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v)
                  for k, v in part.items() if k not in _NOT_CACHED and _cacheable(v)} for part in inputs)


class WanLoraTrainingModule(DiffusionTrainingModule):
    """A WanVideoPipeline with PEFT LoRA injected into the trained DiT expert."""

    def __init__(self, cfg: TrainConfig, with_encoders: bool = False, storage=None, cache_dir=None):
        super().__init__()
        self.cfg = cfg
        self.family = cfg.spec.family
        dtype = DTYPES[cfg.precision]
        device = "cuda" if cfg.device == "cuda" else "cpu"
        # The chosen expert is loaded alone, so it is always `pipe.dit` (as in upstream's A14B runs).
        roles = [cfg.expert_role] + (["text_encoder", "vae"] if with_encoders else [])
        self.pipe = load_pipeline(cfg.spec, cfg.weights, device=device, dtype=dtype, roles=roles,
                                  tokenizer=with_encoders, storage=storage, cache_dir=cache_dir)
        self.train_units, self.cache_units = self.pipe.split_pipeline_units(["dit"])
        self.pipe.scheduler.set_timesteps(1000, training=True)
        self.pipe.freeze_except([])
        self.pipe.dit = self.add_lora_to_model(self.pipe.dit, target_modules=cfg.targets, lora_rank=cfg.lora_rank,
                                               lora_alpha=cfg.lora_alpha, upcast_dtype=dtype)
        if cfg.lora_dropout > 0:
            self._set_lora_dropout(cfg.lora_dropout)
        if cfg.precision == "fp16":
            modulation_in_fp32(self.pipe.dit)
        if cfg.base_weights_fp8:
            frozen_linears_to_fp8(self.pipe.dit)
        self.min_boundary, self.max_boundary = cfg.timestep_range
        if not any(p.requires_grad for p in self.parameters()):
            raise ValueError(f"LoRA targets {cfg.lora_targets!r} matched no Linear layer of the DiT")

    def _set_lora_dropout(self, p: float) -> None:
        for module in self.pipe.dit.modules():
            drop = getattr(module, "lora_dropout", None)
            if isinstance(drop, torch.nn.ModuleDict):
                for key in drop:
                    drop[key] = torch.nn.Dropout(p)

    def step_inputs(self, cached: tuple[dict, dict, dict]) -> tuple[dict, dict, dict]:
        shared, posi, nega = (dict(x) for x in cached)
        shared.update({
            "max_timestep_boundary": self.max_boundary, "min_timestep_boundary": self.min_boundary,
            "use_gradient_checkpointing": self.cfg.gradient_checkpointing,
            "use_gradient_checkpointing_offload": self.cfg.gradient_checkpointing and self.cfg.activation_offload, "cfg_scale": 1, "cfg_merge": False,
        })
        return shared, posi, nega

    def forward(self, cached=None, frames=None, prompt: str = ""):
        """Loss for one sample, from its cache entry or (no cache) from decoded frames and a prompt."""
        if cached is None:
            inputs = raw_inputs(frames, prompt, self.family, str(self.pipe.device), vae_tiling(self.cfg))
            with torch.no_grad():
                for unit in self.cache_units:
                    inputs = self.pipe.unit_runner(unit, self.pipe, *inputs)
            cached = inputs
        inputs = self.step_inputs(cached)
        inputs = self.transfer_data_to_device(inputs, self.pipe.device, self.pipe.torch_dtype)
        for unit in self.train_units:
            inputs = self.pipe.unit_runner(unit, self.pipe, *inputs)
        shared, posi, _ = inputs
        if self.cfg.timestep_sampling == "uniform" and self.cfg.loss_weighting == "default":
            return FlowMatchSFTLoss(self.pipe, **shared, **posi)  # DiffSynth's own draw and weight
        scheduler = self.pipe.scheduler
        n = len(scheduler.timesteps)
        index = pick_index(self.cfg, scheduler.sigmas, *index_range(n, self.min_boundary, self.max_boundary))
        shared.update(one_timestep(index, n))
        loss = FlowMatchSFTLoss(self.pipe, **shared, **posi)
        if self.cfg.loss_weighting == "none":  # undo the schedule's weight of this timestep
            loss = loss / scheduler.linear_timesteps_weights[index]
        return loss

    @torch.no_grad()
    def fixed_timestep_loss(self, cached, fraction: float, seed: int) -> float:
        """Validation loss of one cached sample at a fixed point of the trained timestep range, with noise
        from `seed`: DiffSynth's loss with its timestep range narrowed to one timestep. The run's random
        state is left as it was, so validating never changes the training numbers."""
        n = len(self.pipe.scheduler.timesteps)
        lo, hi = index_range(n, self.min_boundary, self.max_boundary)
        shared, posi, nega = self.step_inputs(cached)
        shared.update(one_timestep(min(hi - 1, lo + int(fraction * (hi - lo))), n), use_gradient_checkpointing=False)
        inputs = self.transfer_data_to_device((shared, posi, nega), self.pipe.device, self.pipe.torch_dtype)
        devices = [torch.cuda.current_device()] if str(self.pipe.device).startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for unit in self.train_units:
                inputs = self.pipe.unit_runner(unit, self.pipe, *inputs)
            shared, posi, _ = inputs
            return float(FlowMatchSFTLoss(self.pipe, **shared, **posi).float())

    def lora_state_dict(self, state_dict: dict | None = None) -> dict:
        """The trained LoRA tensors with DiT-relative names (upstream's `remove_prefix_in_ckpt=pipe.dit.`)."""
        state_dict = self.state_dict() if state_dict is None else state_dict
        return self.export_trainable_state_dict(state_dict, remove_prefix=LORA_PREFIX)
