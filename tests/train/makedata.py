"""A tiny dataset in the quality export's layout: metadata.csv (video,prompt) + media below it."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

PROMPTS = ["a red square moves right", "파란 원이 아래로 움직인다", "a green bar grows", "노란 점이 깜박인다",
           "a white line rotates", "검은 배경에 빨간 사각형"]


def write_video(path: Path, seed: int, frames: int = 9, size: int = 64) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (size, size))
    colour = rng.integers(0, 255, 3).tolist()
    for t in range(frames):
        img = np.zeros((size, size, 3), np.uint8)
        x = (seed * 7 + t * 5) % (size - 16)
        img[16:32, x:x + 16] = colour
        writer.write(img)
    writer.release()


def export_dataset(archive: Path, out: Path, n: int = 4, corrupt: int = 0) -> Path:
    """Raw clips in `archive`, laid out for training by the quality service's export."""
    import pyarrow as pa

    from vidtune.quality.dataset import export

    make_dataset(archive, n=n, corrupt=corrupt)
    with open(archive / "metadata.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    table = pa.table({"media": [r["video"] for r in rows], "caption": [r["prompt"] for r in rows]})
    export(table, str(archive), str(out))
    return out


def make_dataset(root: Path, n: int = 4, corrupt: int = 0, image: bool = False) -> Path:
    """n small clips (+ `corrupt` undecodable files, + one still image when `image`)."""
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        write_video(media / f"clip{i}.mp4", i)
        rows.append({"video": f"media/clip{i}.mp4", "prompt": PROMPTS[i % len(PROMPTS)]})
    for j in range(corrupt):
        (media / f"broken{j}.mp4").write_bytes(b"not a video at all")
        rows.append({"video": f"media/broken{j}.mp4", "prompt": "broken"})
    if image:
        import cv2

        cv2.imwrite(str(media / "still.png"), np.full((64, 64, 3), 128, np.uint8))
        rows.append({"video": "media/still.png", "prompt": "회색 정지 화면"})
    return write_metadata(root, rows)


def write_metadata(root: Path, rows: list[dict]) -> Path:
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["video", "prompt"])
        w.writeheader()
        w.writerows(rows)
    return root


class Crash(RuntimeError):
    """Stands for a process killed mid-run."""


def crash_at(step: int):
    """An `on_step` that kills the run when it has done `step` steps."""
    def on_step(done: int, entry: dict) -> None:
        if done == step:
            raise Crash(f"killed after step {step}")
    return on_step


def write_timecoded_clip(path: Path, width: int, height: int, seconds: float, fps: int = 4) -> Path:
    """A grey clip whose frame N decodes to RGB value N (up to 255 frames): the pixels say which frame it is."""
    from vidtune.samples import ffmpeg_run

    path.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg_run(["-f", "lavfi", "-i", f"color=c=black:size={width}x{height}:rate={fps}:duration={seconds}",
                "-vf", "format=yuv420p,geq=lum='16+N*219/255':cb=128:cr=128", "-c:v", "libx264", "-preset",
                "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p", str(path)])
    return path


def mixed_dataset(root: Path) -> Path:
    """Landscape and portrait clips of 3 s and 30 s (4 fps, time-coded), a portrait still and a 0.5 s clip."""
    rows = []
    for name, (w, h), seconds in (("land3", (160, 90), 3), ("land30", (160, 90), 30),
                                  ("port3", (90, 160), 3), ("port30", (90, 160), 30), ("blink", (160, 90), 0.5)):
        write_timecoded_clip(root / "media" / f"{name}.mp4", w, h, seconds)
        rows.append({"video": f"media/{name}.mp4", "prompt": f"{name} 회색 화면이 점점 밝아진다"})
    import cv2

    cv2.imwrite(str(root / "media" / "still.png"), np.full((160, 90, 3), 100, np.uint8))
    rows.append({"video": "media/still.png", "prompt": "세로 정지 화면"})
    return write_metadata(root, rows)
