"""Tiny random Wan models of the real DiffSynth classes, built offline for CPU tests and the demo.

`build_tiny_weights(spec, directory)` writes one safetensors file per role plus a small umT5-style
tokenizer, and `register_tiny_configs()` tells DiffSynth's loader about them, so that
`WanVideoPipeline.from_pretrained` detects the files exactly as it detects the published checkpoints
(by a hash of parameter names and shapes).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import torch

from diffsynth.core.vram.initialization import skip_model_initialization
from diffsynth.models.wan_video_vae import VideoVAE38_, VideoVAE_, WanVideoVAE, WanVideoVAE38

from .specs import SPECS, ComponentSpec, ModelSpec, get_spec


class TinyWanVideoVAE(WanVideoVAE):
    """The Wan2.1 VAE (z16, 8x down) with a configurable channel width.

    Upstream fixes the width at 96 in the constructor; the parent is built with empty (meta) parameters
    so only the small replacement core is ever allocated. Everything else, encode/decode/tiling and the
    latent normalisation, is the parent's.
    """

    def __init__(self, z_dim: int = 16, dim: int = 8):
        with skip_model_initialization():
            super().__init__(z_dim=z_dim)
        self.model = VideoVAE_(dim=dim, z_dim=z_dim).eval().requires_grad_(False)


class TinyWanVideoVAE38(WanVideoVAE38):
    """The Wan2.2 VAE (z48, 16x down) with configurable encoder and decoder widths (upstream: 160/256)."""

    def __init__(self, z_dim: int = 48, dim: int = 8, dec_dim: int = 8):
        with skip_model_initialization():
            super().__init__(z_dim=z_dim, dim=dim)
        self.model = VideoVAE38_(dim=dim, z_dim=z_dim, dec_dim=dec_dim).eval().requires_grad_(False)


def _import(path: str):
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build_component(component: ComponentSpec, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised model for one component, deterministic for a given seed.

    The caller's random state is left untouched, so a run draws the same numbers whether the tiny
    weights were built just now or found on disk.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _import(component.model_class)(**component.kwargs)
    if component.model_name == "wan_video_dit":
        # A damped random head keeps the tiny model's predictions (and the loss) at a sane scale.
        with torch.no_grad():
            for p in model.head.parameters():
                p.mul_(0.1)
    return model.float().eval()


def _component_hash(component: ComponentSpec) -> str:
    from diffsynth.core.loader.file import hash_state_dict_keys

    # Empty (meta) parameters are still drawn on the CPU first: keep the caller's random state.
    with torch.random.fork_rng(devices=[]), skip_model_initialization():
        model = _import(component.model_class)(**component.kwargs)
    return hash_state_dict_keys(model.state_dict())


_registered: set[str] = set()
_lock = threading.Lock()


def register_tiny_configs() -> list[dict]:
    """Add every tiny component to `diffsynth.configs.MODEL_CONFIGS` (idempotent) and return the entries."""
    from diffsynth.configs import MODEL_CONFIGS

    entries = []
    with _lock:
        for spec in SPECS.values():
            if not spec.tiny:
                continue
            for component in spec.components:
                key = f"{component.model_class}:{json.dumps(component.kwargs, sort_keys=True)}"
                entry = {"model_hash": _component_hash(component), "model_name": component.model_name,
                         "model_class": component.model_class, "extra_kwargs": dict(component.kwargs)}
                if key not in _registered:
                    # Two roles with the same shapes (dit, dit2) share one entry: the loader would
                    # otherwise load the file twice.
                    if not any(c.get("model_hash") == entry["model_hash"] for c in MODEL_CONFIGS):
                        MODEL_CONFIGS.append(entry)
                    _registered.add(key)
                entries.append(entry)
    return entries


# Hangul, Latin and digits so the tokenizer covers the Korean captions of the archive.
_TOKENIZER_TEXT = [
    "a cat walks on the grass in the sunny garden",
    "a news anchor speaks in a studio with blue lights",
    "the camera pans across a city skyline at night",
    "waves crash on a rocky beach under a cloudy sky",
    "a red car drives along a mountain road",
    "people dance at a festival with colourful lanterns",
    "고양이가 햇살 좋은 정원의 잔디 위를 걷고 있다",
    "뉴스 앵커가 파란 조명이 있는 스튜디오에서 말하고 있다",
    "카메라가 밤의 도시 풍경을 가로질러 이동한다",
    "흐린 하늘 아래 바위 해변에 파도가 부서진다",
    "빨간 자동차가 산길을 따라 달린다",
    "사람들이 형형색색의 등불이 있는 축제에서 춤을 춘다",
    "서울의 한강 공원에서 아이들이 자전거를 탄다",
    "드라마 장면: 두 사람이 카페에서 이야기를 나눈다",
    "0 1 2 3 4 5 6 7 8 9 2024년 12월 31일 KBS MBC SBS",
]


def build_tiny_tokenizer(directory: str | Path, vocab_size: int = 512) -> Path:
    """Train a small Unigram tokenizer with umT5's special ids (pad=0, </s>=1, unk=2) and save it.

    Saved through `T5TokenizerFast` so `AutoTokenizer` (and DiffSynth's HuggingfaceTokenizer) load it
    like the real umT5 tokenizer directory; no sentencepiece model or download is involved.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import T5TokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(_TOKENIZER_TEXT * 4, trainer=trainer)
    tok.post_processor = TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                            special_tokens=[("</s>", tok.token_to_id("</s>"))])
    ids = {t: tok.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")}
    assert ids == {"<pad>": 0, "</s>": 1, "<unk>": 2}, ids
    fast = T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0)
    fast.save_pretrained(str(directory))
    return directory


_built: dict[tuple[str, str], Path] = {}


def build_tiny_weights(spec_or_name: ModelSpec | str, directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny model's files (one safetensors per role + tokenizer/) into `directory`.

    Files already present are kept, so repeated calls (and concurrent processes sharing a cache
    directory) cost nothing after the first; within a process the result is memoised.
    """
    from safetensors.torch import save_file

    spec = get_spec(spec_or_name)
    if not spec.tiny:
        raise ValueError(f"{spec.name} is not a tiny model; its weights come from a path or URI")
    directory = Path(directory)
    key = (spec.name, str(directory.resolve()))
    with _lock:
        if key in _built:
            return _built[key]
    register_tiny_configs()
    directory.mkdir(parents=True, exist_ok=True)
    for i, component in enumerate(spec.components):
        target = directory / component.files
        if target.exists():
            continue
        model = build_component(component, seed=seed + i)
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        save_file(state, str(tmp))
        tmp.replace(target)
    tokenizer_dir = directory / spec.tokenizer
    if not (tokenizer_dir / "tokenizer.json").exists():
        build_tiny_tokenizer(tokenizer_dir)
    with _lock:
        _built[key] = directory
    return directory
