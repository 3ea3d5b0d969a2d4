"""Named output profiles: the canvases the Wan models train on."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

from vidtune.platform.errors import InvalidArgument


@dataclass(frozen=True)
class Profile:
    name: str
    width: int
    height: int
    fps: float = 0.0            # 0 keeps the source rate (made constant)
    max_duration: float = 0.0   # seconds; 0 keeps the whole clip
    crf: int = 18               # libx264 quality: visually lossless enough for training data
    preset: str = "veryfast"    # libx264 speed/size trade-off
    nvenc_cq: int = 19          # h264_nvenc constant-quality equivalent of crf

    def with_overrides(self, fps: float | None = None, max_duration: float | None = None) -> "Profile":
        return replace(self, fps=self.fps if not fps else float(fps),
                       max_duration=self.max_duration if not max_duration else float(max_duration))

    def settings_hash(self) -> str:
        """A short hash of everything that changes the output bytes, used in output keys."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


PROFILES = {
    # What the archive is standardised on today.
    "wan-720p": Profile("wan-720p", 1280, 720),
    # Wan2.2 TI2V-5B's native canvas (multiples of 32 for its 16x-down VAE and 2x2 patches).
    "wan-704p": Profile("wan-704p", 1280, 704, fps=24.0),
    # Wan2.x 480p training canvas.
    "wan-480p": Profile("wan-480p", 832, 480, fps=16.0),
}


def get_profile(name: str, fps: float | None = None, max_duration: float | None = None) -> Profile:
    try:
        base = PROFILES[name]
    except KeyError:
        raise InvalidArgument(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
    if fps is not None and fps < 0 or max_duration is not None and max_duration < 0:
        raise InvalidArgument("fps and max_duration must be >= 0")
    return base.with_overrides(fps, max_duration)
