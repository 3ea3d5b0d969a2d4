"""Named Wan2.x model specs as data.

A spec says which DiffSynth classes make up a model, with which constructor arguments, and which files
each role is read from. Training, generation and evaluation all resolve a model by name here, so the
real checkpoints (Wan2.2-TI2V-5B, Wan2.2-T2V-A14B) and the tiny random stand-ins used on the CPU share
one code path: only the sizes and the file names differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..platform.errors import InvalidArgument

# DiffSynth names a model by its role in the pipeline; the loader fetches them by these names.
DIT = "wan_video_dit"
VAE = "wan_video_vae"
TEXT_ENCODER = "wan_video_text_encoder"

# The A14B experts hand over at this timestep (x1000) when sampling (upstream `switch_DiT_boundary`).
A14B_SWITCH_BOUNDARY = 0.875
# Upstream trains the two experts as two runs split at this fraction of the timestep range
# (`--max_timestep_boundary` for the low-noise run, `--min_timestep_boundary` for the high-noise run).
A14B_TRAIN_BOUNDARY = 0.417


@dataclass(frozen=True)
class ComponentSpec:
    """One model file (or shard set) of a spec: its pipeline role, class and file pattern."""

    role: str                     # dit | dit2 | vae | text_encoder
    model_name: str               # DiffSynth model name the pipeline fetches it by
    model_class: str              # import path of the class
    kwargs: dict = field(default_factory=dict)
    files: str = ""               # glob below the weights root, e.g. "high_noise_model/diffusion_pytorch_model*.safetensors"
    state_dict_converter: str = ""  # DiffSynth converter for the published file layout, if any


@dataclass(frozen=True)
class ModelSpec:
    """A named Wan model: its components, tokenizer location and the facts trainers need."""

    name: str
    family: str                   # "ti2v" (one DiT, z48 VAE) or "t2v-a14b" (two DiT experts, z16 VAE)
    components: tuple[ComponentSpec, ...]
    tokenizer: str                # directory below the weights root holding the umT5 tokenizer files
    z_dim: int
    vae_stride: int               # pixels per latent cell in height/width
    text_dim: int
    tiny: bool = False
    switch_boundary: float | None = None
    train_boundary: float | None = None
    description: str = ""

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(c.role for c in self.components)

    @property
    def dit_roles(self) -> tuple[str, ...]:
        return tuple(c.role for c in self.components if c.model_name == DIT)

    def component(self, role: str) -> ComponentSpec:
        for c in self.components:
            if c.role == role:
                return c
        raise InvalidArgument(f"model {self.name!r} has no component {role!r} (it has {', '.join(self.roles)})")

    def timestep_range(self, expert: str) -> tuple[float, float]:
        """(min, max) boundary of the training timestep *index* range for an expert.

        DiffSynth's training schedule runs from t=1000 down to 0, so index fraction [0, 0.417) is the
        high-noise end (t >= 875) and [0.417, 1] the low-noise end; single-DiT models use all of it.
        """
        if len(self.dit_roles) == 1:
            return 0.0, 1.0
        if expert in ("high", "dit"):
            return 0.0, self.train_boundary
        if expert in ("low", "dit2"):
            return self.train_boundary, 1.0
        raise InvalidArgument(f"expert {expert!r} is not one of high, low for model {self.name!r}")

    def expert_role(self, expert: str) -> str:
        """The pipeline role (dit or dit2) of an expert name ("high"/"low"; "" for single-DiT models)."""
        if len(self.dit_roles) == 1:
            if expert not in ("", "dit"):
                raise InvalidArgument(f"model {self.name!r} has one DiT; expert {expert!r} does not apply")
            return "dit"
        roles = {"high": "dit", "dit": "dit", "low": "dit2", "dit2": "dit2"}
        if expert not in roles:
            raise InvalidArgument(f"model {self.name!r} has two experts: choose expert high or low, not {expert!r}")
        return roles[expert]


_DIT_CLASS = "diffsynth.models.wan_video_dit.WanModel"
_TEXT_CLASS = "diffsynth.models.wan_video_text_encoder.WanTextEncoder"
_DIT_CONVERTER = "diffsynth.utils.state_dict_converters.wan_video_dit.WanVideoDiTStateDictConverter"
_VAE_CONVERTER = "diffsynth.utils.state_dict_converters.wan_video_vae.WanVideoVAEStateDictConverter"

_TI2V_DIT = dict(has_image_input=False, patch_size=[1, 2, 2], in_dim=48, dim=3072, ffn_dim=14336, freq_dim=256,
                 text_dim=4096, out_dim=48, num_heads=24, num_layers=30, eps=1e-6, seperated_timestep=True,
                 require_clip_embedding=False, require_vae_embedding=False, fuse_vae_embedding_in_latents=True)
_A14B_DIT = dict(has_image_input=False, patch_size=[1, 2, 2], in_dim=16, dim=5120, ffn_dim=13824, freq_dim=256,
                 text_dim=4096, out_dim=16, num_heads=40, num_layers=40, eps=1e-6)

# Tiny stand-ins: same classes and the same switches as the real ones, sizes small enough for a CPU test.
TINY_DIT = dict(dim=64, ffn_dim=128, freq_dim=256, text_dim=32, num_heads=2, num_layers=2)
TINY_TEXT_ENCODER = dict(vocab=1024, dim=32, dim_attn=32, dim_ffn=64, num_heads=2, num_layers=2, num_buckets=32)
TINY_VAE_DIM = 8

WAN22_TI2V_5B = ModelSpec(
    name="wan2.2-ti2v-5b",
    family="ti2v",
    components=(
        ComponentSpec("dit", DIT, _DIT_CLASS, _TI2V_DIT, "diffusion_pytorch_model*.safetensors", _DIT_CONVERTER),
        ComponentSpec("text_encoder", TEXT_ENCODER, _TEXT_CLASS, {}, "models_t5_umt5-xxl-enc-bf16.*"),
        ComponentSpec("vae", VAE, "diffsynth.models.wan_video_vae.WanVideoVAE38", {}, "Wan2.2_VAE.*",
                      _VAE_CONVERTER),
    ),
    tokenizer="google/umt5-xxl",
    z_dim=48, vae_stride=16, text_dim=4096,
    description="Wan2.2 TI2V 5B: one 3072-dim DiT (30 layers), z48 Wan2.2 VAE (16x down), umT5-XXL text encoder.",
)

WAN22_T2V_A14B = ModelSpec(
    name="wan2.2-t2v-a14b",
    family="t2v-a14b",
    components=(
        ComponentSpec("dit", DIT, _DIT_CLASS, _A14B_DIT, "high_noise_model/diffusion_pytorch_model*.safetensors",
                      _DIT_CONVERTER),
        ComponentSpec("dit2", DIT, _DIT_CLASS, _A14B_DIT, "low_noise_model/diffusion_pytorch_model*.safetensors",
                      _DIT_CONVERTER),
        ComponentSpec("text_encoder", TEXT_ENCODER, _TEXT_CLASS, {}, "models_t5_umt5-xxl-enc-bf16.*"),
        ComponentSpec("vae", VAE, "diffsynth.models.wan_video_vae.WanVideoVAE", {}, "Wan2.1_VAE.*", _VAE_CONVERTER),
    ),
    tokenizer="google/umt5-xxl",
    z_dim=16, vae_stride=8, text_dim=4096,
    switch_boundary=A14B_SWITCH_BOUNDARY, train_boundary=A14B_TRAIN_BOUNDARY,
    description="Wan2.2 T2V A14B: two 5120-dim DiT experts (dit = high noise, dit2 = low noise), z16 Wan2.1 VAE.",
)


def _tiny_dit(real: dict) -> dict:
    return {**real, **TINY_DIT}


TINY_TI2V = ModelSpec(
    name="tiny-ti2v",
    family="ti2v",
    components=(
        ComponentSpec("dit", DIT, _DIT_CLASS, _tiny_dit(_TI2V_DIT), "dit.safetensors"),
        ComponentSpec("text_encoder", TEXT_ENCODER, _TEXT_CLASS, TINY_TEXT_ENCODER, "text_encoder.safetensors"),
        ComponentSpec("vae", VAE, "vidtune.models.tiny.TinyWanVideoVAE38",
                      {"z_dim": 48, "dim": TINY_VAE_DIM, "dec_dim": TINY_VAE_DIM}, "vae.safetensors"),
    ),
    tokenizer="tokenizer",
    z_dim=48, vae_stride=16, text_dim=TINY_DIT["text_dim"], tiny=True,
    description="Random tiny Wan2.2 TI2V (DiT dim 64, 2 layers, 2 heads; z48 VAE dim 8; text encoder dim 32).",
)

TINY_T2V_A14B = ModelSpec(
    name="tiny-t2v-a14b",
    family="t2v-a14b",
    components=(
        ComponentSpec("dit", DIT, _DIT_CLASS, _tiny_dit(_A14B_DIT), "dit.safetensors"),
        ComponentSpec("dit2", DIT, _DIT_CLASS, _tiny_dit(_A14B_DIT), "dit2.safetensors"),
        ComponentSpec("text_encoder", TEXT_ENCODER, _TEXT_CLASS, TINY_TEXT_ENCODER, "text_encoder.safetensors"),
        ComponentSpec("vae", VAE, "vidtune.models.tiny.TinyWanVideoVAE", {"z_dim": 16, "dim": TINY_VAE_DIM},
                      "vae.safetensors"),
    ),
    tokenizer="tokenizer",
    z_dim=16, vae_stride=8, text_dim=TINY_DIT["text_dim"], tiny=True,
    switch_boundary=A14B_SWITCH_BOUNDARY, train_boundary=A14B_TRAIN_BOUNDARY,
    description="Random tiny Wan2.2 T2V A14B: two tiny DiT experts, z16 VAE dim 8, text encoder dim 32.",
)

SPECS: dict[str, ModelSpec] = {s.name: s for s in (WAN22_TI2V_5B, WAN22_T2V_A14B, TINY_TI2V, TINY_T2V_A14B)}
# `tiny` in a training config means the tiny model of the same family as the real one it stands in for.
ALIASES = {"tiny": "tiny-ti2v", "tiny-a14b": "tiny-t2v-a14b"}


def get_spec(spec_or_name: ModelSpec | str) -> ModelSpec:
    """The spec for a name (or the spec itself), with a clear error naming the known models."""
    if isinstance(spec_or_name, ModelSpec):
        return spec_or_name
    name = ALIASES.get(spec_or_name, spec_or_name)
    try:
        return SPECS[name]
    except KeyError:
        raise InvalidArgument(f"unknown model {spec_or_name!r}; known: {', '.join(sorted(SPECS))}") from None


def weight_locations(weights) -> list[str]:
    """Every path or URI a weights value names (a root, or a dict of roles to a location or a list)."""
    if not weights:
        return []
    if isinstance(weights, str):
        return [weights]
    values = weights.values() if isinstance(weights, dict) else [weights]
    return [str(x) for v in values for x in (v if isinstance(v, (list, tuple)) else [v]) if x]
