"""Caps on everything a request can make large, from the service's settings, with safe defaults.

A request over a cap is refused before any work starts: INVALID_ARGUMENT for a value that can never be
served (a size, a worker count), RESOURCE_EXHAUSTED for capacity that is busy now (concurrent jobs). Every
message names the limit and the setting that raises it.

  VIDTUNE_MAX_WORKERS        parallel items of one job (ffmpeg processes, decoders)          default 8
  VIDTUNE_MAX_PIXELS         decoded pixels of one image or video frame (read from the header
                             before decoding: a 400 KB PNG can claim 50,000 x 50,000)       default 8192*8192
  VIDTUNE_MAX_GEN_PIXELS     height x width of a generated video                             default 1280*720
  VIDTUNE_MAX_GEN_FRAMES     frames of a generated video                                     default 121
  VIDTUNE_MAX_GEN_STEPS      denoising steps                                                 default 100
  VIDTUNE_MAX_GEN_SEEDS      seeds (samples per prompt and checkpoint)                       default 16
  VIDTUNE_MAX_TRAIN_PIXELS   height x width of a training sample (or bucket area)            default 1920*1088
  VIDTUNE_MAX_TRAIN_FRAMES   frames of a training sample                                     default 241
  VIDTUNE_MAX_ACTIVE_JOBS    queued + running jobs of one service                            default 32
  VIDTUNE_MAX_LOCAL_JOBS     of those, on the `local` backend (one process each)             default 2
  VIDTUNE_MAX_KUBERNETES_JOBS  of those, on the `kubernetes` backend (one Job each)          default 16
Requests larger than 4 MiB are refused by gRPC itself (RESOURCE_EXHAUSTED) before any of this runs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

from .errors import InvalidArgument, VidtuneError


class ResourceExhausted(VidtuneError):
    code = "RESOURCE_EXHAUSTED"


@dataclass(frozen=True)
class Limits:
    max_workers: int = 8
    max_pixels: int = 8192 * 8192
    max_gen_pixels: int = 1280 * 720
    max_gen_frames: int = 121
    max_gen_steps: int = 100
    max_gen_seeds: int = 16
    max_train_pixels: int = 1920 * 1088
    max_train_frames: int = 241
    max_active_jobs: int = 32
    max_local_jobs: int = 2
    max_kubernetes_jobs: int = 16

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Limits":
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            name = env_name(f.name)
            if env.get(name):
                try:
                    values[f.name] = int(env[name])
                except ValueError:
                    raise InvalidArgument(f"{name}={env[name]!r} is not a whole number") from None
        return cls(**values)

    def check(self, name: str, value: int, what: str) -> int:
        """`value` when it is within the cap `name` (a field of Limits), else INVALID_ARGUMENT naming both."""
        cap = getattr(self, name)
        if int(value) > cap:
            raise InvalidArgument(f"{what}={value} exceeds the limit {cap} ({env_name(name)})")
        return int(value)

    def spec_problems(self, spec: dict) -> list[str]:
        """Caps every job kind's spec is held to: the parallel items of one job (`workers`)."""
        try:
            self.check("max_workers", int(spec.get("workers") or 0), "workers")
        except (InvalidArgument, TypeError, ValueError) as e:
            return [str(e) if isinstance(e, InvalidArgument) else f"workers={spec.get('workers')!r}: not a number"]
        return []

    def check_pixels(self, width: int, height: int, what: str, when: str = "before decoding") -> None:
        if int(width) * int(height) > self.max_pixels:
            raise InvalidArgument(f"{what}: {width}x{height} = {int(width) * int(height)} pixels exceeds the limit "
                                  f"{self.max_pixels} per image or frame ({env_name('max_pixels')}); refused "
                                  f"{when}")

    def check_generation(self, height: int, width: int, frames: int, steps: int, seeds: int) -> None:
        if int(height) * int(width) > self.max_gen_pixels:
            raise InvalidArgument(f"height x width = {height}x{width} exceeds the limit {self.max_gen_pixels} "
                                  f"pixels ({env_name('max_gen_pixels')})")
        self.check("max_gen_frames", frames, "num_frames")
        self.check("max_gen_steps", steps, "steps")
        self.check("max_gen_seeds", seeds, "number of seeds")

    def check_training(self, height: int, width: int, frames: int) -> None:
        if int(height) * int(width) > self.max_train_pixels:
            raise InvalidArgument(f"height x width = {height}x{width} exceeds the limit {self.max_train_pixels} "
                                  f"pixels ({env_name('max_train_pixels')})")
        self.check("max_train_frames", frames, "num_frames")

    def admit(self, unfinished: list[dict], backend: str, service: str) -> None:
        """RESOURCE_EXHAUSTED when `service` already has as many unfinished jobs as its cap allows, in all
        or on `backend`."""
        on_backend = sum(r.get("backend", "inprocess") == backend for r in unfinished)
        for name, active, what in (("max_active_jobs", len(unfinished), f"{service} jobs"),
                                   (f"max_{backend}_jobs", on_backend, f"{service} jobs on the {backend} backend")):
            cap = getattr(self, name, None)
            if cap is not None and active >= cap:
                raise ResourceExhausted(f"{active} {what} are queued or running, the limit is {cap} "
                                        f"({env_name(name)}); submit again when one has finished")


def env_name(field_name: str) -> str:
    return f"VIDTUNE_{field_name.upper()}"


def limits() -> Limits:
    return Limits.from_env()
