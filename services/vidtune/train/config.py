"""The training configuration: one validated dataclass, read from YAML or a dict, with named presets.

Every field has a default that suits the CPU; presets (presets.py) fill in what a GPU run needs. A
config is checked as a whole before any model is loaded, so a typo fails in a second with a message
naming the field, not an hour into a run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..models.specs import get_spec
from ..platform.errors import InvalidArgument
from ..platform.limits import limits
from .dataset import EXTRACTIONS
from .timesteps import SAMPLINGS, WEIGHTINGS

PRECISIONS = ("fp32", "fp16", "bf16")
SCHEDULES = ("constant", "linear", "cosine")
DEFAULT_TARGETS = "q,k,v,o,ffn.0,ffn.2"
DEFAULT_NODE_SELECTOR = {"nvidia.com/gpu.product": "Tesla-V100-SXM2-32GB"}


@dataclass
class TrainConfig:
    """Everything a LoRA run depends on. Fields named after upstream DiffSynth's training flags."""

    # model
    model: str = "tiny"                    # wan2.2-ti2v-5b | wan2.2-t2v-a14b | tiny (= tiny-ti2v) | tiny-t2v-a14b
    expert: str = ""                       # A14B only: high | low (which DiT expert this run trains)
    weights: Any = None                    # dir / s3 prefix, or {role: path or URI}; empty only for tiny models
    # data
    dataset: str = ""                      # dir or s3 prefix holding metadata.csv (video,prompt) + media
    height: int = 64
    width: int = 64
    num_frames: int = 9                    # 4n+1
    dataset_repeat: int = 1
    use_cache: bool = True                 # VAE latents + text embeddings computed once, epochs read the cache
    # optimisation
    epochs: int = 1
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"          # constant | linear | cosine (after warmup)
    warmup_steps: int = 0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = True
    activation_offload: bool = False       # with checkpointing: each block's saved input kept in CPU memory
    max_steps: int = 0                     # 0: run all epochs
    seed: int = 0
    timestep_sampling: str = "uniform"     # uniform (DiffSynth) | logit_normal | sigmoid | shift (see timesteps.py)
    logit_mean: float = 0.0                # logit_normal: mean of the normal before the sigmoid
    logit_std: float = 1.0                 # logit_normal: its standard deviation
    sigmoid_scale: float = 1.0             # sigmoid: scale of the normal before the sigmoid
    timestep_shift: float = 3.0            # shift: the flow-matching shift applied to uniform timesteps
    loss_weighting: str = "default"        # default (the schedule's weight, DiffSynth) | none
    # validation: a held-out dataset (dir or metadata csv, e.g. the quality export of the val split)
    validation_dataset: str = ""
    validation_every_steps: int = 50       # loss at fixed timesteps with seeded noise, comparable over time
    validation_timesteps: int = 4          # fixed timesteps spread evenly over the trained range
    # buckets and clip windows (off: every clip cropped to height x width, its first num_frames frames, as upstream)
    buckets: bool = False                  # each clip to the size nearest its aspect ratio, windows per extraction
    bucket_area: int = 0                   # pixels per frame of every bucket size (0: height x width)
    bucket_max_aspect: float = 2.0         # the widest size's width/height (and the tallest's height/width)
    bucket_frames: str = ""                # frame counts (4n+1) windows may have, e.g. "17,33,49" ("": num_frames);
                                           # a clip takes the longest it fills, shorter clips are rejected
    frame_extraction: str = "head"         # head | chunk (back to back) | slide (every frame_stride) | uniform
    frame_stride: int = 16                 # slide: frames between window starts
    frame_windows: int = 3                 # uniform: windows per clip, first to last frame evenly
    # samples during training: fixed prompts generated with the LoRA as it is at that step (seeded)
    sample_prompts: str = ""               # prompt file as for `vidtune eval generate --prompts` ("": no samples)
    sample_every_steps: int = 100
    sample_size: str = ""                  # HxWxF ("": height x width x num_frames)
    sample_steps: int = 20                 # denoising steps
    sample_cfg_scale: float = 5.0
    sample_seed: int = 0
    # LoRA
    lora_rank: int = 32
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: str = DEFAULT_TARGETS    # comma-separated module name suffixes of the DiT that get LoRA
    # numerics and distribution
    precision: str = "fp32"                # fp32 (CPU) | fp16 (V100, DeepSpeed dynamic loss scale) | bf16 (A100+)
    device: str = "cpu"                    # cpu | cuda
    deepspeed_stage: int = 0               # 0: plain accelerate; 2: ZeRO-2
    deepspeed_offload_optimizer: bool = False
    num_gpus: int = 0                      # GPUs per node (0: the CPU)
    base_weights_fp8: bool = False         # frozen DiT Linear weights stored in fp8 e4m3 (scaled per row)
    # memory and multi-node options (memory.py models their effect; `vidtune train presets` prints it)
    cache_offload: bool = False            # caching: umT5 and the VAE take turns on the GPU, the idle one in CPU RAM
    cache_text_chunk: int = 256            # prompts umT5 encodes per turn (their embeddings wait in CPU RAM)
    vae_tiled: bool = False                # caching stage: the VAE encodes overlapping spatial tiles, blended
    vae_tile_size: int = 16                # tile side in latent cells (x the VAE stride in pixels)
    vae_tile_stride: int = 12              # tile step in latent cells (size - stride cells are blended)
    num_nodes: int = 1                     # nodes of num_gpus each (Kubernetes: a Kubeflow TrainJob when > 1)
    hang_timeout_s: float = 0.0            # no progress for this long ends the attempt (stacks logged); twice
                                           # this is the process group's collective timeout. 0: off
    max_skipped_steps_in_row: int = 25    # steps skipped for a non-finite loss/gradients before the run stops (0: never)
    # checkpoints
    save_every_steps: int = 50             # training state for resume (and step-N LoRA)
    save_every_epochs: int = 1             # epoch-N.safetensors
    keep_states: int = 2                   # newest training states kept (older ones deleted; 0: all)
    # Kubernetes placement (used by the kubernetes launcher only)
    node_selector: dict = field(default_factory=lambda: dict(DEFAULT_NODE_SELECTOR))  # the Job's GPU nodes; $VIDTUNE_K8S_NODE_SELECTOR replaces this default
    memory_per_gpu_gb: float = 0.0         # the preset's expected peak per GPU (informational, not enforced)
    notes: str = ""                        # free text kept with the run

    # -- derived
    @property
    def spec(self):
        return get_spec(self.model)

    @property
    def expert_role(self) -> str:
        return self.spec.expert_role(self.expert)

    @property
    def timestep_range(self) -> tuple[float, float]:
        return self.spec.timestep_range(self.expert or "dit")

    @property
    def targets(self) -> list[str]:
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]

    @property
    def bucket_frame_counts(self) -> tuple[int, ...]:
        v = self.bucket_frames
        text = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v or "").strip()
        try:
            counts = sorted({int(x) for x in text.split(",") if x.strip()}) if text else [self.num_frames]
        except ValueError:
            raise InvalidArgument(f"bucket_frames={self.bucket_frames!r}: expected frame counts like 17,33,49") from None
        return tuple(counts)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        if not self.sample_size:
            return self.height, self.width, self.num_frames
        try:
            h, w, f = (int(x) for x in str(self.sample_size).lower().split("x"))
        except ValueError:
            raise InvalidArgument(f"sample_size={self.sample_size!r}: expected HxWxF, e.g. 480x832x49") from None
        return h, w, f

    def bucket_plan(self):
        """The bucket sizes and window rule of this config (buckets on)."""
        from .dataset import BucketPlan, bucket_sizes

        area = self.bucket_area or self.height * self.width
        return BucketPlan(tuple(bucket_sizes(area, self._size_step, self.bucket_max_aspect)), self.bucket_frame_counts,
                          self.frame_extraction, self.frame_stride, self.frame_windows)

    @property
    def _size_step(self) -> int:
        return max(16, self.spec.vae_stride * 2)  # VAE stride x DiT patch 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A hash of what decides the sample order and the numbers, so a resume refuses a changed config."""
        keys = ("model", "expert", "height", "width", "num_frames", "dataset_repeat", "epochs", "seed",
                "gradient_accumulation_steps", "lora_rank", "lora_alpha", "lora_targets", "precision")
        values = {k: getattr(self, k) for k in keys}
        defaults = TrainConfig()
        # Later fields join only when changed, so runs saved before they existed still resume.
        values.update({k: getattr(self, k) for k in _LATER_FINGERPRINT_FIELDS if getattr(self, k) != getattr(defaults, k)})
        blob = json.dumps(values, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def validate(self) -> "TrainConfig":
        spec = self.spec  # raises for an unknown model
        self.expert_role  # raises for a wrong expert
        if len(spec.dit_roles) > 1 and not self.expert:
            raise InvalidArgument(f"model {spec.name} has two DiT experts: set expert to high or low")
        if self.num_frames < 1 or self.num_frames % 4 != 1:
            raise InvalidArgument(f"num_frames={self.num_frames}: Wan needs 4n+1 frames (e.g. 9, 49, 81, 121)")
        div = self._size_step
        for name in ("height", "width"):
            v = getattr(self, name)
            if v <= 0 or v % div:
                raise InvalidArgument(f"{name}={v}: must be a positive multiple of {div} for {spec.name}")
        limits().check_training(self.height, self.width, self.num_frames)  # buckets stay within these too
        self._validate_buckets_and_samples()
        if self.precision not in PRECISIONS:
            raise InvalidArgument(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.lr_schedule not in SCHEDULES:
            raise InvalidArgument(f"lr_schedule={self.lr_schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.deepspeed_stage not in (0, 2):
            raise InvalidArgument(f"deepspeed_stage={self.deepspeed_stage}: supported are 0 (off) and 2 (ZeRO-2)")
        if self.precision == "fp16" and self.device == "cuda" and self.deepspeed_stage == 0:
            raise InvalidArgument("precision fp16 needs deepspeed_stage 2 (its dynamic loss scaling keeps fp16 stable)")
        if self.device not in ("cpu", "cuda"):
            raise InvalidArgument(f"device={self.device!r}: choose cpu or cuda")
        if self.device == "cpu" and self.precision == "fp16":
            raise InvalidArgument("precision fp16 is for GPUs; use fp32 (or bf16) on the CPU")
        for name in ("dataset_repeat", "epochs", "gradient_accumulation_steps", "lora_rank", "save_every_steps",
                     "save_every_epochs", "keep_states"):
            if int(getattr(self, name)) < 1:
                raise InvalidArgument(f"{name}={getattr(self, name)}: must be at least 1")
        if self.timestep_sampling not in SAMPLINGS:
            raise InvalidArgument(f"timestep_sampling={self.timestep_sampling!r}: choose one of {', '.join(SAMPLINGS)}")
        if self.loss_weighting not in WEIGHTINGS:
            raise InvalidArgument(f"loss_weighting={self.loss_weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
        if self.logit_std <= 0 or self.sigmoid_scale <= 0 or self.timestep_shift <= 0:
            raise InvalidArgument("logit_std, sigmoid_scale and timestep_shift must be positive")
        if self.validation_dataset and not self.use_cache:
            raise InvalidArgument("validation_dataset needs use_cache: true (held-out clips are encoded once)")
        if self.validation_dataset and (self.validation_every_steps < 1 or self.validation_timesteps < 1):
            raise InvalidArgument("validation_every_steps and validation_timesteps must be at least 1")
        if self.cache_text_chunk < 1 or self.num_nodes < 1:
            raise InvalidArgument("cache_text_chunk and num_nodes must be at least 1")
        if self.vae_tiled and not 0 < self.vae_tile_stride <= self.vae_tile_size:
            raise InvalidArgument(f"vae_tile_stride={self.vae_tile_stride}, vae_tile_size={self.vae_tile_size}: "
                                  "need 0 < stride <= size (latent cells)")
        if self.hang_timeout_s < 0:
            raise InvalidArgument(f"hang_timeout_s={self.hang_timeout_s}: must be 0 (off) or a number of seconds")
        if self.max_skipped_steps_in_row < 0:
            raise InvalidArgument(f"max_skipped_steps_in_row={self.max_skipped_steps_in_row}: must be 0 (never stop) or more")
        if self.learning_rate <= 0:
            raise InvalidArgument(f"learning_rate={self.learning_rate}: must be positive")
        if not 0 <= self.lora_dropout < 1:
            raise InvalidArgument(f"lora_dropout={self.lora_dropout}: must be in [0, 1)")
        if not self.targets:
            raise InvalidArgument("lora_targets is empty: name the Linear modules to adapt, e.g. q,k,v,o,ffn.0,ffn.2")
        if self.weights in (None, "") and not spec.tiny:
            raise InvalidArgument(f"model {spec.name} needs weights (a directory or s3:// prefix); nothing is downloaded")
        return self

    def _validate_buckets_and_samples(self) -> None:
        if self.buckets:
            if not self.use_cache:
                raise InvalidArgument("buckets need use_cache: true (clips are probed, bucketed and encoded once)")
            if self.frame_extraction not in EXTRACTIONS:
                raise InvalidArgument(f"frame_extraction={self.frame_extraction!r}: choose one of {', '.join(EXTRACTIONS)}")
            counts = self.bucket_frame_counts
            bad = [f for f in counts if f < 1 or f % 4 != 1]
            if bad:
                raise InvalidArgument(f"bucket_frames={self.bucket_frames!r}: Wan needs 4n+1 frames, not {bad}")
            if counts[-1] > self.num_frames or (self.bucket_area or 0) > self.height * self.width:
                raise InvalidArgument(f"bucket_frames up to {counts[-1]} and bucket_area {self.bucket_area} must stay "
                                      f"within num_frames {self.num_frames} and height x width "
                                      f"{self.height * self.width}: the memory budget is sized for those")
            if self.bucket_area < 0 or self.bucket_max_aspect < 1 or self.frame_stride < 1 or self.frame_windows < 1:
                raise InvalidArgument("bucket_area must be >= 0, bucket_max_aspect >= 1, frame_stride and "
                                      "frame_windows >= 1")
            if not self.bucket_plan().sizes:
                raise InvalidArgument(f"no bucket size of multiples of {self._size_step} fits bucket_area "
                                      f"{self.bucket_area or self.height * self.width} within aspect {self.bucket_max_aspect}")
        if self.sample_prompts:
            if not self.use_cache:
                raise InvalidArgument("sample_prompts needs use_cache: true (their text embeddings are cached)")
            if len(self.spec.dit_roles) > 1:
                raise InvalidArgument(f"sample_prompts: {self.spec.name} samples need both experts while a run "
                                      "trains one; generate from its epochs with `vidtune eval generate`")
            h, w, f = self.sample_shape
            if h <= 0 or w <= 0 or h % self._size_step or w % self._size_step or f < 1 or f % 4 != 1:
                raise InvalidArgument(f"sample_size={self.sample_size!r}: sizes multiples of {self._size_step}, "
                                      "frames 4n+1")
            limits().check_generation(h, w, f, self.sample_steps, 1)
            if self.sample_every_steps < 1 or self.sample_steps < 1 or self.sample_cfg_scale <= 0:
                raise InvalidArgument("sample_every_steps and sample_steps must be at least 1, sample_cfg_scale positive")


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_LATER_FINGERPRINT_FIELDS = ("timestep_sampling", "logit_mean", "logit_std", "sigmoid_scale", "timestep_shift",
                             "loss_weighting", "base_weights_fp8", "vae_tiled", "vae_tile_size", "vae_tile_stride",
                             "buckets", "bucket_area", "bucket_max_aspect", "bucket_frames", "frame_extraction",
                             "frame_stride", "frame_windows")


def config_from_dict(data: dict, base: TrainConfig | None = None) -> TrainConfig:
    """A validated config from a dict; a `preset` key starts from that preset, other keys override it."""
    from .presets import preset_config

    data = dict(data or {})
    preset = data.pop("preset", None)
    cfg = preset_config(preset) if preset else dataclasses.replace(base or TrainConfig())
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise InvalidArgument(f"unknown training config field(s) {unknown}; known: {', '.join(sorted(_FIELDS))}")
    for key, value in data.items():
        current = getattr(cfg, key)
        if value is not None and isinstance(current, (int, float)) and not isinstance(current, bool):
            try:
                value = type(current)(value)
            except (TypeError, ValueError):
                raise InvalidArgument(f"{key}={value!r}: expected a {type(current).__name__}") from None
        setattr(cfg, key, value)
    return cfg.validate()


def load_config(source: str | dict | TrainConfig | None = None, storage=None, **overrides) -> TrainConfig:
    """A config from a YAML file/URI, a YAML string, a dict or a preset name, with keyword overrides."""
    from .presets import PRESETS

    if isinstance(source, TrainConfig):
        data = source.to_dict()
    elif isinstance(source, dict):
        data = dict(source)
    elif not source:
        data = {}
    elif source in PRESETS:
        data = {"preset": source}
    elif source.endswith((".yaml", ".yml")):
        from ..platform.storage import Storage

        data = yaml.safe_load((storage or Storage()).read_text(source)) or {}
    else:
        data = yaml.safe_load(source) or {}
        if not isinstance(data, dict):
            raise InvalidArgument(f"training config {source!r} is neither a preset, a YAML file nor a YAML mapping")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(data)


def field_notes() -> tuple[dict[str, str], dict[str, str]]:
    """(field -> its comment, field -> the heading of its group) from TrainConfig's source, so the comments
    a reader of this file sees are what `vidtune train config` prints; a comment's continuation lines join it."""
    import inspect
    import re

    notes: dict[str, str] = {}
    groups: dict[str, str] = {}
    heading, last = "", None
    for line in inspect.getsource(TrainConfig).splitlines():
        if (m := re.match(r"    (\w+): [^#]*?(?:#\s*(.*))?$", line)) and not line.lstrip().startswith("#"):
            last = m.group(1)
            notes[last], groups[last] = (m.group(2) or "").strip(), heading
        elif (m := re.match(r"    # (.*)$", line)):
            heading, last = m.group(1).strip(), None
        elif (m := re.match(r"\s{5,}# (.*)$", line)) and last:
            notes[last] = f"{notes[last]} {m.group(1).strip()}".strip()
    return notes, groups

