"""Tiny random stand-ins for the real metric models, built from the same classes and saved in the same formats.

They exercise every loading path (open_clip bundle with a Hugging Face XLM-RoBERTa text tower and tokenizer;
an I3D-style TorchScript file) on a machine with no model hub. Their scores are arbitrary numbers: they
exist for tests, the local demo and benchmarks, never for judging a model.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

_CORPUS = [
    "a red car drives down a city street at night", "a cat sleeps on a sofa in the sun",
    "news anchor reads the evening headlines", "waves break on a sandy beach at sunset",
    "서울 도심의 야경을 비추는 드론 영상", "뉴스 앵커가 저녁 뉴스를 전하고 있다", "바닷가에 파도가 부서지는 장면",
    "고양이가 소파 위에서 잠을 자고 있다", "빨간 자동차가 밤거리를 달린다", "산 위로 해가 떠오르는 풍경",
]


def tiny_clip_config(embed_dim: int = 32, image_size: int = 32) -> dict:
    """The shape of open_clip's `xlm-roberta-base-ViT-B-32`, shrunk: ViT + HF XLM-RoBERTa text tower."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"hf_model_name": "xlm-roberta-base", "hf_tokenizer_name": "xlm-roberta-base",
                     "hf_pooler_type": "mean_pooler", "hf_proj_type": "linear"},
    }


def build_tiny_clip_bundle(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a loadable multilingual CLIP bundle (config, random weights, HF config + tokenizer) to `out_dir`."""
    import open_clip
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import XLMRobertaConfig, XLMRobertaTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(_CORPUS * 4, trainers.UnigramTrainer(vocab_size=300, special_tokens=specials,
                                                                 unk_token="<unk>"))
    hf_tok = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                     cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                     model_max_length=77)
    from tokenizers import processors

    hf_tok.backend_tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    hf_tok.save_pretrained(out)
    XLMRobertaConfig(vocab_size=len(hf_tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=80, pad_token_id=1, bos_token_id=0,
                     eos_token_id=2).save_pretrained(out)
    cfg = tiny_clip_config()
    cfg_local = json.loads(json.dumps(cfg))
    cfg_local["text_cfg"]["hf_model_name"] = cfg_local["text_cfg"]["hf_tokenizer_name"] = str(out)
    name = f"vidtune-tiny-build-{abs(hash(str(out))) % 10**8}"
    open_clip.factory._MODEL_CONFIGS[name] = cfg_local  # build only; loading goes through the public path
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained_text=False)
    del open_clip.factory._MODEL_CONFIGS[name]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    (out / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "vidtune_tiny_random": True, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                              "std": [0.26862954, 0.26130258, 0.27577711]}}, indent=2))
    return out


class TinyI3D(torch.nn.Module):
    """Same call signature as the standard `i3d_torchscript.pt`: (videos [B,3,T,H,W], rescale, resize,
    return_features) -> features [B, feature_dim] or 400 logits."""

    def __init__(self, feature_dim: int = 32):
        super().__init__()
        self.conv1 = torch.nn.Conv3d(3, 8, kernel_size=3, stride=(1, 2, 2), padding=1)
        self.conv2 = torch.nn.Conv3d(8, feature_dim, kernel_size=3, stride=2, padding=1)
        self.logits = torch.nn.Linear(feature_dim, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = torch.nn.functional.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear",
                                                align_corners=False)
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        feats = h.mean(dim=(2, 3, 4))
        if return_features:
            return feats
        return self.logits(feats)


def build_tiny_i3d(path: str | Path, feature_dim: int = 32, seed: int = 0) -> Path:
    """Save a TinyI3D as TorchScript at `path` (loaded by fvd.load_i3d like the real file)."""
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is the format the real I3D ships in
        torch.jit.save(torch.jit.script(TinyI3D(feature_dim).eval()), str(path))
    return path
