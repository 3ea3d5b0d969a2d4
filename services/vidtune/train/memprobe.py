"""Measured peak memory of the caching stage and of one training step, each in a fresh process.

What memory.py estimates, measured on the CPU: the process's peak resident set (Linux VmHWM, reset
through /proc/self/clear_refs just before the measured part) above its resident set at that moment.
Large tensors go straight to mmap (MALLOC_MMAP_THRESHOLD_ fixed in the child), so freed memory leaves
the resident set at once and the peak is the peak of live tensors plus allocator slack.

`measure(kind, config)` runs `python -m vidtune.train.memprobe KIND CONFIG_JSON` and returns its JSON:
  caching:  {"weights": bytes of umT5 + VAE, "text_peak", "vae_peak": peak above the loaded models
             while umT5 encodes the prompt / the VAE encodes the clip}
  training: {"weights", "step_peak": peak above the loaded model over forward + backward + AdamW step}
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

MMAP_THRESHOLD = 1 << 16  # bytes; fixed, so glibc never keeps freed tensor memory in its heap


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def reset_peak() -> int:
    """Reset the peak resident set to the current one and return it (bytes)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def peak_since(baseline: int) -> int:
    return _status("VmHWM") - baseline


def _frames(cfg, height: int = 0, width: int = 0):
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height or cfg.height, 0:width or cfg.width]
    return [Image.fromarray(np.stack([(x + 4 * i) % 256, (y // 2 + 60) % 256, (x + y) % 256], -1).astype(np.uint8))
            for i in range(cfg.num_frames)]


def _module_bytes(*modules) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


def caching(cfg) -> dict:
    from .module import EncoderPlacement, cache_pipeline, encode_prompts, encode_sample, split_text_units, vae_tiling

    pipe = cache_pipeline(cfg)
    units = pipe.split_pipeline_units(["dit"])[1]
    placement = EncoderPlacement(pipe, str(pipe.device), cfg.cache_offload)
    text_units = split_text_units(units)[0]
    frames, small = _frames(cfg), _frames(cfg, *(2 * cfg.spec.vae_stride,) * 2)
    # One warm-up of each encoder first: kernels and thread pools set themselves up on first use.
    placement.use("text_encoder")
    encode_prompts(pipe, text_units, ["warm-up"])
    base = reset_peak()
    text = encode_prompts(pipe, text_units, ["측정용 문장 a prompt to measure"])[0]
    text_peak = peak_since(base)
    placement.use("vae")
    encode_sample(pipe, units, small, "", cfg.spec.family, text=text)
    base = reset_peak()
    encode_sample(pipe, units, frames, "", cfg.spec.family, text=text, tiling=vae_tiling(cfg))
    return {"weights": _module_bytes(pipe.text_encoder, pipe.vae), "text_peak": text_peak,
            "vae_peak": peak_since(base)}


def training(cfg) -> dict:
    import torch

    from .module import WanLoraTrainingModule, cache_pipeline, encode_sample

    pipe = cache_pipeline(cfg)
    entry = encode_sample(pipe, pipe.split_pipeline_units(["dit"])[1], _frames(cfg), "a prompt", cfg.spec.family)
    del pipe
    torch.manual_seed(0)
    module = WanLoraTrainingModule(cfg).train()
    optimizer = torch.optim.AdamW(module.trainable_modules(), lr=1e-4)
    module(cached=entry).backward()  # warm-up step: AdamW's state is allocated here, measured below
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    base = reset_peak()
    module(cached=entry).backward()
    optimizer.step()
    return {"weights": _module_bytes(module.pipe.dit), "step_peak": peak_since(base)}


def measure(kind: str, config: dict, timeout: float = 600) -> dict:
    """Run one measurement in a fresh single-threaded process and return what it printed."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "vidtune.train.memprobe", kind, json.dumps(config)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe {kind} {config} failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    import torch

    from .cli import stdout_to_stderr
    from .config import load_config

    torch.set_num_threads(1)
    kind, config = argv
    with stdout_to_stderr():
        result = {"caching": caching, "training": training}[kind](load_config(json.loads(config)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
