"""Load a named Wan model into DiffSynth's `WanVideoPipeline` from local paths or object-store URIs.

Weights are never fetched from a model hub: every file comes from a path or an `s3://` URI the user
gives (object-store files are copied once into a local cache), or, for the tiny models, is built on
the spot. DiffSynth's own loader then detects each file by its parameter hash, as it does for the
published checkpoints.
"""
from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..platform.cache import cached_local
from ..platform.errors import InvalidArgument, NotFound
from ..platform.settings import cache_dir
from ..platform.storage import Storage, is_s3, join
from .specs import ModelSpec, get_spec, weight_locations
from .tiny import build_tiny_weights, register_tiny_configs

Weights = str | Mapping[str, str | list[str]] | None


def default_cache_dir() -> Path:
    """Where object-store weights and tiny models are kept between runs (VIDTUNE_CACHE_DIR/models)."""
    return cache_dir() / "models"


def tiny_weights_dir(spec_or_name: ModelSpec | str, cache_dir: str | Path | None = None) -> Path:
    """The directory holding a tiny model's files, built once per directory."""
    spec = get_spec(spec_or_name)
    return build_tiny_weights(spec, Path(cache_dir or default_cache_dir()) / "tiny" / spec.name)


def _expand(location: str, pattern: str, storage: Storage, cache_dir: Path, what: str) -> list[str]:
    """Files of `pattern` below `location` (a directory or prefix), or `location` itself when it is a file."""
    if is_s3(location):
        if storage.exists(location):
            return [str(cached_local(location, storage, what, root=cache_dir / "objects"))]
        prefix = location.rstrip("/") + "/"
        matches = [u for u in storage.list(prefix) if fnmatch.fnmatch(u[len(prefix):], pattern)]
        if not matches:
            raise NotFound(f"no {what} weights matching {pattern!r} below {location}")
        return [str(cached_local(u, storage, what, root=cache_dir / "objects")) for u in sorted(matches)]
    path = Path(location)
    if path.is_file():
        return [str(path)]
    matches = sorted(str(p) for p in path.glob(pattern)) if path.is_dir() else []
    if not matches:
        raise NotFound(f"no {what} weights matching {pattern!r} in {location}")
    return matches


def _local_dir(location: str, storage: Storage, cache_dir: Path, what: str) -> str:
    """A local directory with the files below `location` (tokenizers are directories of small files)."""
    if not is_s3(location) and not Path(location).is_dir():
        raise NotFound(f"{what} directory {location} does not exist")
    return str(cached_local(location, storage, what, root=cache_dir / "objects"))


@dataclass
class ResolvedWeights:
    """Local files for each role and the tokenizer directory, ready for DiffSynth's ModelConfig."""

    files: dict[str, list[str]]
    tokenizer: str | None


def resolve_weights(spec_or_name: ModelSpec | str, weights: Weights = None, roles: Iterable[str] | None = None,
                    storage: Storage | None = None, cache_dir: str | Path | None = None,
                    tokenizer: bool = True) -> ResolvedWeights:
    """Map a spec's roles onto local files.

    `weights` is a root directory / s3 prefix laid out like the published model repository, or a dict
    role -> path/URI (a file, a list of shards, or a directory to glob) with an optional "root" for the
    rest and "tokenizer" for the tokenizer directory. Tiny models need no weights (built in the cache).
    """
    spec = get_spec(spec_or_name)
    cache = Path(cache_dir or default_cache_dir())
    storage = storage or Storage()
    for location in weight_locations(weights):  # given by a caller: its storage's policy decides
        storage.check(location, f"weights of {spec.name}")
    if weights is None or weights == "":
        if not spec.tiny:
            raise InvalidArgument(f"model {spec.name} needs weights: a directory or s3:// prefix with its files "
                                  f"({', '.join(c.files for c in spec.components)})")
        weights = str(tiny_weights_dir(spec, cache))
    mapping = {"root": weights} if isinstance(weights, str) else dict(weights)
    unknown = set(mapping) - set(spec.roles) - {"root", "tokenizer"}
    if unknown:
        raise InvalidArgument(f"weights name unknown roles {sorted(unknown)} for model {spec.name} "
                              f"(roles: {', '.join(spec.roles)}, root, tokenizer)")
    root = mapping.get("root")
    wanted = list(roles) if roles is not None else list(spec.roles)
    files: dict[str, list[str]] = {}
    for role in wanted:
        component = spec.component(role)
        given = mapping.get(role)
        if given is None:
            if root is None:
                raise InvalidArgument(f"no weights for {role} of {spec.name}: give weights[{role!r}] or a root")
            files[role] = _expand(root, component.files, storage, cache, f"{spec.name} {role}")
        elif isinstance(given, (list, tuple)):
            files[role] = [p for g in given for p in _expand(g, component.files, storage, cache, role)]
        else:
            files[role] = _expand(given, component.files, storage, cache, f"{spec.name} {role}")
    tok_dir = None
    if tokenizer:
        tok_location = mapping.get("tokenizer") or (join(root, spec.tokenizer) if root else None)
        if tok_location is None:
            raise InvalidArgument(f"no tokenizer for {spec.name}: give weights['tokenizer'] or a root")
        tok_dir = _local_dir(tok_location, storage, cache, f"{spec.name} tokenizer")
    return ResolvedWeights(files=files, tokenizer=tok_dir)


def _lora_entries(lora) -> list[dict]:
    entries = []
    for item in lora or ():
        if isinstance(item, str):
            item = {"path": item}
        elif isinstance(item, (tuple, list)):
            item = {"path": item[0], "alpha": item[1]} if len(item) > 1 else {"path": item[0]}
        entries.append({"alpha": 1.0, "role": "dit", **dict(item)})
    return entries


log = logging.getLogger(__name__)


class _StdoutRouter:
    """sys.stdout that sends the writes of threads loading a model to a buffer and passes the rest on."""

    buffers: dict[int, list[str]] = {}

    def __init__(self, original):
        self._original = original

    def write(self, text: str) -> int:
        buffer = self.buffers.get(threading.get_ident())
        if buffer is None:
            return self._original.write(text)
        buffer.append(text)
        return len(text)

    def __getattr__(self, name):
        return getattr(self._original, name)


_router_lock = threading.Lock()


@contextlib.contextmanager
def _loader_prints_to_debug_log():
    """DiffSynth prints a download banner and a JSON dump per file it loads; they go to the debug log, so
    the output of a command stays its own. Only this thread's prints are caught."""
    ident = threading.get_ident()
    if ident in _StdoutRouter.buffers:  # nested: the outer block logs
        yield
        return
    with _router_lock:
        if not isinstance(sys.stdout, _StdoutRouter):
            sys.stdout = _StdoutRouter(sys.stdout)
    buffer = _StdoutRouter.buffers[ident] = []
    try:
        yield
    finally:
        del _StdoutRouter.buffers[ident]
        if "".join(buffer).strip():
            log.debug("DiffSynth loader output:\n%s", "".join(buffer).rstrip())


def load_pipeline(spec_or_name: ModelSpec | str, weights: Weights = None, device: str = "cpu",
                  dtype: torch.dtype = torch.float32, lora=(), roles: Iterable[str] | None = None,
                  storage: Storage | None = None, cache_dir: str | Path | None = None,
                  component_dtypes: Mapping[str, torch.dtype] | None = None, tokenizer: bool = True):
    """A `WanVideoPipeline` for a named model, loaded with DiffSynth's own loader.

    `roles` limits which components are loaded (training from cached latents needs only the DiTs).
    `lora` is a list of LoRA files (path or URI, or dicts {path, alpha, role}) fused into the DiT of
    that role with `pipe.load_lora`. `component_dtypes` keeps e.g. the text encoder in fp32 when the
    rest runs in fp16 (umT5 is unstable in fp16).
    """
    from diffsynth.core import ModelConfig
    from diffsynth.pipelines.wan_video import WanVideoPipeline

    spec = get_spec(spec_or_name)
    storage = storage or Storage()
    cache = Path(cache_dir or default_cache_dir())
    # Every file is local by now; this keeps DiffSynth from ever reaching for a model hub.
    os.environ.setdefault("DIFFSYNTH_SKIP_DOWNLOAD", "True")
    register_tiny_configs()
    resolved = resolve_weights(spec, weights, roles=roles, storage=storage, cache_dir=cache, tokenizer=tokenizer)
    configs = []
    # Order matters: DiffSynth hands the first DiT file to `dit` (high noise) and the second to `dit2`.
    for component in spec.components:
        if component.role not in resolved.files:
            continue
        paths = resolved.files[component.role]
        extra = {}
        if component_dtypes and component.role in component_dtypes:
            extra["computation_dtype"] = component_dtypes[component.role]
        configs.append(ModelConfig(path=paths[0] if len(paths) == 1 else paths, **extra))
    with _loader_prints_to_debug_log():
        pipe = WanVideoPipeline.from_pretrained(
            torch_dtype=dtype, device=device, model_configs=configs,
            tokenizer_config=ModelConfig(path=resolved.tokenizer) if resolved.tokenizer else None,
            redirect_common_files=False,
        )
    for entry in _lora_entries(lora):
        target = getattr(pipe, entry["role"], None)
        if target is None:
            raise InvalidArgument(f"LoRA {entry['path']} targets {entry['role']}, which {spec.name} does not load")
        local = _expand(storage.check(entry["path"], "LoRA"), "*.safetensors", storage, cache, "LoRA")[0]
        with _loader_prints_to_debug_log():
            pipe.load_lora(target, local, alpha=float(entry["alpha"]))
    return pipe
