"""Clips with a known answer, made by ffmpeg's own sources and filters (no frame is drawn in Python).

    moving    testsrc2 scrolling sideways: a clean, sharp, steadily moving picture (the good reference)
    noise     uniform RGB noise, new every frame
    boiling   the first moving frame held still, with fresh noise every frame ("boiling" stills)
    frozen    the first moving frame held still, nothing else
    blank     flat mid-grey
    flicker   the moving clip with its left half +50 and its right half -50 luma on odd frames: local flicker
              whose frame-mean luma stays (nearly) constant
"""
from __future__ import annotations

import subprocess
from pathlib import Path

FPS = 16
_MOVING = "testsrc2=s={w}x{h}:r={fps},scroll=h=0.004"
_STILL = "testsrc2=s={w}x{h}:r={fps},trim=end_frame=1,loop=loop={n}:size=1,setpts=N/{fps}/TB"
FILTERS = {
    "moving": _MOVING,
    "noise": "color=c=gray:s={w}x{h}:r={fps},format=yuv444p,geq=lum='random(1)*255':cb='random(2)*255'"
             ":cr='random(3)*255'",
    "boiling": _STILL + ",noise=alls=40:allf=t+u",
    "frozen": _STILL,
    "blank": "color=c=0x808080:s={w}x{h}:r={fps}",
    "flicker": _MOVING + ",format=yuv444p,geq=lum='if(mod(N,2),clip(lum(X,Y)+if(lt(X,W/2),50,-50),0,255),"
                         "lum(X,Y))':cb='cb(X,Y)':cr='cr(X,Y)'",
}
DEGENERATE = ["noise", "boiling", "frozen", "blank", "flicker"]


def make_clip(kind: str, path: Path, w: int = 416, h: int = 240, frames: int = 33) -> Path:
    """Encode `frames` frames of clip `kind` as H.264 (crf 12, yuv420p) at `path`."""
    vf = FILTERS[kind].format(w=w, h=h, fps=FPS, n=frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", vf,
                    "-frames:v", str(frames), "-c:v", "libx264", "-preset", "veryfast", "-crf", "12",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def rescale(src: Path, path: Path, w: int, h: int) -> Path:
    """The same clip at another size (lanczos), as an encoder would deliver it."""
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-vf",
                    f"scale={w}:{h}:flags=lanczos", "-c:v", "libx264", "-preset", "veryfast", "-crf", "12",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path
