"""CLIP text-video score and CLIP temporal consistency, with open_clip models loaded from a path or URI.

The default architecture is open_clip's `xlm-roberta-base-ViT-B-32`: its text tower is XLM-RoBERTa, which
reads Korean, where the English CLIP BPE tokenizer does not and truncates at 77 tokens. open_clip fetches
that text tower's config and tokenizer from the Hugging Face hub by name; here they come from a local
"bundle" directory (or an s3:// prefix) instead, so scoring runs with no hub access:

    <bundle>/open_clip_config.json   optional {"model_cfg": {...}, "preprocess_cfg": {...}}; without it the
                                     built-in config of `model_name` is used
    <bundle>/open_clip_model.safetensors (or open_clip_pytorch_model.bin, *.pt)   the full CLIP weights
    <bundle>/config.json, tokenizer.json, ...   the HF text tower config and tokenizer (HF text towers only)

A plain weights file is accepted for models whose text tower is open_clip's own (e.g. ViT-B-32).
Scores mean something only with real trained weights; tests use tiny random bundles of the same classes.

Formulas (frames: the `sample_frames` evenly spaced frames of each video, see videoio.uniform_indices):
    clip_cosine  = mean_t cos(E_img(frame_t), E_txt(prompt))            raw cosine in [-1, 1]
    clip_score   = 100 * max(clip_cosine, 0)                            the CLIPScore convention, 0..100
    temporal_consistency = mean_t cos(E_img(frame_t), E_img(frame_t+1)) over adjacent sampled frames
Long captions (archive captions run to 10,000+ characters; the text tower reads `context_length` tokens,
77 for these models): a caption that fits is embedded as is. A longer one is split into sentences (after
. ! ? and their full-width forms, and at line breaks), the sentences are packed in order into chunks that
fit the context, each chunk is embedded, and the text embedding is the normalised mean of the chunk
embeddings (each chunk counts equally). A single sentence longer than the context is cut at the context;
at most MAX_CAPTION_CHUNKS chunks are kept. Every record states the caption's tokens, chunks and the share
of its tokens the encoder saw (`prompt_kept_share`, 1.0 unless a sentence was cut or chunks were dropped).
Images are resized (shorter side to the model's image size, PIL bicubic, antialiased), centre-cropped and
normalised with the model's mean/std, exactly as open_clip's validation transform does (the same numbers),
and encoded in batches.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidtune.platform.errors import FailedPrecondition, InvalidArgument
from vidtune.platform.storage import Storage

from vidtune.platform.cache import cached_local
from vidtune.platform.settings import cache_dir

log = logging.getLogger("vidtune.evaluate.clip")

DEFAULT_CLIP_MODEL = "xlm-roberta-base-ViT-B-32"
MAX_CAPTION_CHUNKS = 64
_SENTENCE_BREAK = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])\s+|\n+")
_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                 "open_clip_pytorch_model.bin", "open_clip_model.bin", "model.safetensors", "model.pt",
                 "open_clip_model.pt")


@dataclass
class ClipModel:
    """A loaded open_clip model with its tokenizer and preprocessing, encoding in batches."""

    model: torch.nn.Module
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str
    source: str
    context_length: int = 77
    device: str = "cpu"
    random_weights: bool = False  # a tiny random bundle (tests, demo): its scores are meaningless
    _text_cache: dict = field(default_factory=dict, repr=False)
    _plans: dict = field(default_factory=dict, repr=False)
    _tower: torch.nn.Module | None = field(default=None, repr=False)

    def describe(self) -> dict:
        return {"model": self.name, "weights": self.source, "image_size": self.image_size,
                "context_length": self.context_length, "random_weights": self.random_weights}

    def preprocess(self, frames: np.ndarray | list[np.ndarray]) -> torch.Tensor:
        """uint8 [N, H, W, 3] (or N frames of any sizes) -> normalised float [N, 3, S, S]: open_clip's validation
        transform (torchvision Resize of the shorter side with PIL bicubic, CenterCrop, ToTensor, Normalize),
        the same numbers."""
        x = torch.from_numpy(np.stack([_resize_crop(f, self.image_size) for f in frames]))
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).to(self.device)

    def image_tower(self) -> torch.nn.Module:
        """The image encoder the metric pass runs: on the CPU, a copy of the tower with its Linear layers on
        oneDNN (onednn.py; about twice as fast on AMD CPUs, same fp32 numbers); otherwise the tower itself.
        Built on first use, holding a second copy of the tower's Linear weights."""
        if self._tower is None:
            tower = self.model.visual
            if self.device == "cpu":
                from .onednn import packed_copy

                s = self.image_size
                example = torch.linspace(-2.0, 2.0, 3 * s * s).view(1, 3, s, s)
                fast = packed_copy(tower, example)
                tower = tower if fast is None else fast
            self._tower = tower
        return self._tower

    @torch.inference_mode()
    def encode_frames(self, frames: np.ndarray | list[np.ndarray], batch_size: int = 8) -> torch.Tensor:
        """Unit-norm image embeddings [N, D] of uint8 RGB frames (an array, or a list of frames of any sizes)."""
        tower = self.image_tower()
        out = []
        for i in range(0, len(frames), batch_size):
            emb = tower(self.preprocess(frames[i:i + batch_size]))
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out)

    def token_count(self, text: str) -> int:
        """Tokens the prompt needs before truncation (to report when the context cuts it off)."""
        inner = getattr(self.tokenizer, "tokenizer", None)
        if inner is not None and hasattr(inner, "encode") and not hasattr(self.tokenizer, "encoder"):
            return len(inner.encode(text))  # HF tokenizer (counts its special tokens)
        if hasattr(self.tokenizer, "encode"):
            return len(self.tokenizer.encode(text)) + 2  # open_clip BPE + <start>/<end>
        return -1

    def caption_plan(self, text: str) -> dict:
        """What the text encoder sees of `text`: {"chunks": [...], "tokens": n, "kept_share": 0..1}."""
        if text in self._plans:
            return self._plans[text]
        limit = self.context_length - 2  # room for the start and end tokens
        n = self.token_count(text) - 2
        if n <= limit:
            plan = {"chunks": [text], "tokens": n + 2, "kept_share": 1.0}
        else:
            chunks: list[tuple[list[str], int]] = []   # (sentences, tokens the encoder keeps of them)
            total = 0
            for sentence in (x.strip() for x in _SENTENCE_BREAK.split(text)):
                if not sentence:
                    continue
                k = self.token_count(sentence) - 2
                total += k
                if not chunks or chunks[-1][1] + k > limit:
                    chunks.append(([], 0))
                chunks[-1] = (chunks[-1][0] + [sentence], min(chunks[-1][1] + k, limit))
            chunks = chunks[:MAX_CAPTION_CHUNKS]
            kept = sum(k for _, k in chunks)
            chunks = [" ".join(c) for c, _ in chunks]
            plan = {"chunks": chunks, "tokens": n + 2, "kept_share": kept / total if total else 1.0}
        self._plans[text] = plan
        return plan

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm text embeddings [N, D] (long captions: mean of sentence chunks, see the module docstring);
        repeated prompts are encoded once, all chunks of all new prompts in one batch."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            plans = [self.caption_plan(t)["chunks"] for t in missing]
            tokens = self.tokenizer([c for chunks in plans for c in chunks]).to(self.device)
            emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()
            start = 0
            for t, chunks in zip(missing, plans):
                self._text_cache[t] = F.normalize(emb[start:start + len(chunks)].mean(0), dim=-1)
                start += len(chunks)
        return torch.stack([self._text_cache[t] for t in texts])


def _resize_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """torchvision's Resize(size) (shorter side to `size`, longer side truncated, PIL bicubic with its
    antialiasing) then CenterCrop(size), on one uint8 RGB frame. PIL resizes without holding the GIL."""
    from PIL import Image

    h, w = frame.shape[:2]
    nh, nw = (int(size * h / w), size) if w <= h else (size, int(size * w / h))
    if (nh, nw) != (h, w):
        frame = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BICUBIC))
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return frame[top:top + size, left:left + size]


def text_video_cosine(frame_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """Mean over frames of cos(frame, text); both inputs unit-norm ([T, D] and [D])."""
    return float((frame_emb @ text_emb).mean())


def temporal_consistency(frame_emb: torch.Tensor) -> float:
    """Mean cosine between adjacent frame embeddings; 1.0 for a still clip, NaN for one frame."""
    if len(frame_emb) < 2:
        return float("nan")
    return float((frame_emb[1:] * frame_emb[:-1]).sum(-1).mean())


def _find_weights(bundle: Path) -> Path | None:
    for name in _WEIGHT_NAMES:
        if (bundle / name).is_file():
            return bundle / name
    cands = sorted(p for p in bundle.iterdir() if p.suffix in (".safetensors", ".pt", ".pth", ".bin")
                   and p.name not in ("pytorch_model.bin", "sentencepiece.bpe.model"))
    return cands[0] if len(cands) == 1 else None


def _register_config(model_cfg: dict) -> str:
    """Register a config with open_clip's own registry under a content-derived name and return that name."""
    import open_clip

    blob = json.dumps(model_cfg, sort_keys=True)
    name = f"vidtune-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    if name not in open_clip.list_models():
        cfg_dir = cache_dir() / "open_clip_configs"
        cfg_dir.mkdir(parents=True, exist_ok=True)
        path = cfg_dir / f"{name}.json"
        path.write_text(blob)
        open_clip.add_model_config(path)
    return name


def load_clip(model_name: str = DEFAULT_CLIP_MODEL, weights: str | None = None,
              storage: Storage | None = None, device: str = "cpu") -> ClipModel:
    """Load an open_clip model from a weights file or bundle directory (path or s3:// URI).

    Weights are required: a CLIP score from random weights would look like a number and mean nothing.
    """
    import open_clip

    if not weights:
        raise FailedPrecondition(
            f"CLIP model {model_name!r} needs weights: pass a weights file or bundle directory (path or s3:// "
            "URI); real scores need real trained weights, none are downloaded here")
    local = cached_local(weights, storage, "CLIP weights")
    bundle = local if local.is_dir() else None
    model_cfg, preprocess_cfg, random_weights = None, {}, False
    if bundle is not None and (bundle / "open_clip_config.json").is_file():
        raw = json.loads((bundle / "open_clip_config.json").read_text())
        model_cfg = raw.get("model_cfg", raw)
        preprocess_cfg = raw.get("preprocess_cfg", {})
        random_weights = bool(raw.get("vidtune_tiny_random"))
    if model_cfg is None:
        model_cfg = open_clip.get_model_config(model_name)
        if model_cfg is None:
            raise InvalidArgument(f"CLIP model {model_name!r} is not an open_clip config and {weights} has no "
                                  "open_clip_config.json")
    model_cfg = json.loads(json.dumps(model_cfg))
    text_cfg = model_cfg.get("text_cfg", {})
    if "hf_model_name" in text_cfg:
        if bundle is None or not (bundle / "config.json").is_file():
            raise FailedPrecondition(
                f"CLIP model {model_name!r} reads text with Hugging Face {text_cfg['hf_model_name']!r}: give a "
                f"bundle directory holding the CLIP weights plus that model's config.json and tokenizer files "
                f"({weights} is not one)")
        # Point the HF text tower and tokenizer at the bundle instead of the hub.
        text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = str(bundle)
    ckpt = _find_weights(bundle) if bundle is not None else local
    if ckpt is None:
        raise FailedPrecondition(f"no CLIP weights file in {weights} (expected one of {', '.join(_WEIGHT_NAMES)})")
    name = _register_config(model_cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _, _ = open_clip.create_model_and_transforms(
            name, pretrained=str(ckpt), device=device, pretrained_text=False, pretrained_image=False,
            image_mean=preprocess_cfg.get("mean"), image_std=preprocess_cfg.get("std"))
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    pcfg = open_clip.get_model_preprocess_cfg(model)
    size = pcfg.get("size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    log.info("loaded CLIP %s from %s", model_name, weights)
    return ClipModel(model=model, tokenizer=tokenizer, image_size=size, mean=tuple(pcfg.get("mean")),
                     std=tuple(pcfg.get("std")), name=model_name, source=str(weights),
                     context_length=int(getattr(tokenizer, "context_length", 77) or 77), device=device,
                     random_weights=random_weights)
