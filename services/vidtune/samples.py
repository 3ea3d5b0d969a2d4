"""A small, synthetic archive shaped like the broadcaster's: clips of several sizes and lengths, stills,
a few damaged files, and one JSON label per item with a long Korean caption. Used by `make demo`,
the tests and the benchmarks; made with ffmpeg's test sources, so nothing is downloaded."""
from __future__ import annotations

import json
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

CATEGORIES = {
    "nature": "자연/풍경", "history": "역사/사회", "culture": "생활/문화", "architecture": "건축",
    "incident": "사건/사고", "festival": "축제", "tangible": "유형문화재", "intangible": "무형문화재",
}
_SUBJECTS = {
    "nature": ["설악산 능선 위로 구름이 천천히 흘러가는 모습", "제주 해안의 현무암 바위에 파도가 부서지는 장면",
               "가을 단풍으로 붉게 물든 계곡과 맑은 물줄기"],
    "history": ["1970년대 시장 거리를 오가는 사람들의 흑백 기록 영상", "광복 직후 서울 거리의 모습을 담은 자료 화면"],
    "culture": ["전통 시장에서 상인들이 손님을 맞이하는 모습", "가족이 모여 김장을 하는 겨울 풍경"],
    "architecture": ["경복궁 근정전의 처마와 단청을 가까이에서 비추는 장면", "한옥 마을의 골목길과 기와지붕"],
    "incident": ["폭우로 불어난 하천을 소방대원들이 살피는 현장", "산불 진화 헬기가 물을 뿌리는 장면"],
    "festival": ["진주 남강 유등축제의 불빛이 강물에 비치는 밤 풍경", "안동 탈춤 축제에서 관객들이 공연을 보는 모습"],
    "tangible": ["석굴암 본존불의 얼굴을 천천히 비추는 화면", "고려청자의 상감 무늬를 자세히 보여주는 장면"],
    "intangible": ["판소리 명창이 북 장단에 맞춰 소리를 하는 무대", "강강술래를 추는 사람들이 원을 그리며 도는 모습"],
}
_DETAILS = ["화면은 고정된 카메라로 촬영되었으며 자연광이 부드럽게 비친다.",
            "카메라가 왼쪽에서 오른쪽으로 천천히 이동하며 전체 풍경을 보여준다.",
            "배경에는 사람들의 움직임이 보이고 멀리 산의 윤곽이 흐릿하게 남아 있다.",
            "색감은 따뜻한 편이며 오후의 햇빛이 장면 전체를 감싸고 있다.",
            "중앙의 피사체가 선명하게 보이고 주변은 얕은 심도로 흐려져 있다.",
            "영상 후반부에는 장면이 조금 더 가까이 확대되어 세부 모습이 드러난다."]


def _object_particle(word: str) -> str:
    """을 after a closed final syllable, 를 after an open one."""
    last = word[-1]
    closed = "가" <= last <= "힣" and (ord(last) - 0xAC00) % 28 != 0
    return "을" if closed else "를"


def korean_caption(category: str, rng: random.Random, sentences: int = 4) -> str:
    subject = rng.choice(_SUBJECTS[category])
    body = " ".join(rng.sample(_DETAILS, k=min(sentences, len(_DETAILS))))
    return f"{subject}{_object_particle(subject)} 담은 영상이다. {body} 이 자료는 {CATEGORIES[category]} 분류의 기록물로 보관되어 있다."


def ffmpeg_run(args: list[str], timeout: float = 120) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True,
                   timeout=timeout, stdin=subprocess.DEVNULL)


def make_clip(path: Path, width: int, height: int, seconds: float, fps: float = 30, source: str = "testsrc2",
              pix_fmt: str = "yuv420p", extra: list[str] | None = None) -> Path:
    """A clip from an ffmpeg test source (testsrc2 moves; `color=c=gray` is a still clip)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    src = f"{source}=size={width}x{height}:rate={fps}" if "=" not in source else f"{source}:size={width}x{height}:rate={fps}"
    ffmpeg_run(["-f", "lavfi", "-i", src, "-t", f"{seconds}", "-pix_fmt", pix_fmt, "-c:v", "libx264",
                "-preset", "ultrafast", *(extra or []), str(path)])
    return path


def make_rotated_clip(path: Path, width: int, height: int, frames: int = 25, rotation: int = 90,
                      value: int = 255) -> Path:
    """A clip stored as width x height with display-rotation metadata (as phones record portrait video).

    ffmpeg 5.1's command line cannot write that metadata; PyAV can."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.set_display_rotation(rotation)
        frame = np.full((height, width, 3), value, np.uint8)
        for _ in range(frames):
            for packet in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def make_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 / max(width - 1, 1)), (y * 255 / max(height - 1, 1)),
                    np.full_like(x, rng.integers(0, 255))], axis=-1).astype(np.uint8)
    cv2.circle(img, (width // 2, height // 2), min(width, height) // 4, (255, 255, 255), -1)
    cv2.imwrite(str(path), img)
    return path


@dataclass
class SampleItem:
    id: str
    file: str          # relative to the archive root
    category: str
    media_type: str
    width: int
    height: int
    duration: float
    caption: str
    damaged: bool = False


def make_archive(root: Path, seed: int = 7, scale: float = 1.0) -> list[SampleItem]:
    """Write media under `root/media` and one broadcaster-style JSON label per item under `root/labels`.

    `scale` shortens clips (0.5 halves every duration) for quick tests.
    """
    rng = random.Random(seed)
    root = Path(root)
    # Different test sources and flips, so only the intended copy reads as a near duplicate.
    plan = [  # (category, kind, width, height, seconds, options)
        ("nature", "video", 1920, 1080, 6, {}), ("nature", "video", 1920, 1080, 8, {"source": "mandelbrot"}),
        ("history", "video", 720, 512, 7, {"source": "life=mold=10:ratio=0.5:death_color=#202020:life_color=#e0e0e0"}),
        ("culture", "video", 1280, 720, 6, {"source": "testsrc"}),
        ("architecture", "video", 1080, 1920, 5.5, {"source": "cellauto=rule=110"}),  # portrait
        ("festival", "video", 1920, 1080, 6, {"fps": 25, "source": "cellauto=rule=30"}),
        ("intangible", "video", 1280, 720, 5.5, {"pix_fmt": "yuv420p10le",
                                                     "source": "mandelbrot=start_x=-0.4:start_y=0.6"}),  # 10-bit
        ("tangible", "video", 721, 405, 5.5, {"source": "sierpinski", "pix_fmt": "yuv444p"}),  # odd size, 4:4:4
        ("incident", "video", 1280, 720, 3, {"source": "testsrc", "extra": ["-vf", "hflip"]}),  # too short
        ("culture", "video", 1280, 720, 5.5, {"source": "color=c=gray"}),             # a still clip
        ("nature", "image", 1920, 1080, 0, {}), ("tangible", "image", 1024, 1365, 0, {}),
        ("architecture", "image", 640, 480, 0, {}),
    ]
    items: list[SampleItem] = []
    for i, (cat, kind, w, h, secs, opts) in enumerate(plan):
        item_id = f"KB{i + 1:05d}"
        if kind == "video":
            rel = f"media/{cat}/{item_id}.mp4"
            secs = max(1.0, round(secs * scale, 2))
            make_clip(root / rel, w, h, secs, **opts)
        else:
            rel = f"media/{cat}/{item_id}.{'png' if i % 2 else 'jpg'}"
            make_image(root / rel, w, h, seed=i)
        items.append(SampleItem(item_id, rel, CATEGORIES[cat], kind, w, h, float(secs),
                                korean_caption(cat, rng, sentences=2 + i % 4)))
    # A smaller re-encode of the first clip: the near duplicate a real archive also has.
    dup = SampleItem("KB00014", "media/nature/KB00014.mp4", CATEGORIES["nature"], "video", 1280, 720,
                     items[0].duration, korean_caption("nature", rng))
    ffmpeg_run(["-i", str(root / items[0].file), "-vf", "scale=1280:720", "-c:v", "libx264", "-preset", "ultrafast",
                "-crf", "30", str(root / dup.file)])
    items.append(dup)
    # Damaged files: what a real archive always has a few of.
    bad = root / "media/incident"
    bad.mkdir(parents=True, exist_ok=True)
    truncated = (root / items[0].file).read_bytes()
    (bad / "KB09001.mp4").write_bytes(truncated[: len(truncated) // 5])
    (bad / "KB09002.mp4").write_text("이 파일은 영상이 아닙니다\n")
    (bad / "KB09003.jpg").write_bytes(b"")
    for j, name in enumerate(("KB09001.mp4", "KB09002.mp4", "KB09003.jpg")):
        items.append(SampleItem(name.split(".")[0], f"media/incident/{name}", CATEGORIES["incident"],
                                "image" if name.endswith(".jpg") else "video", 1920, 1080, 10.0,
                                korean_caption("incident", rng), damaged=True))
    # A caption too short and one of a repeated character, for the caption rules.
    items[3].caption = "시장 풍경."
    items[5].caption = items[5].caption + "ㅋ" * 80
    labels = root / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    for it in items:
        (labels / f"{it.id}.json").write_text(json.dumps(
            {"id": it.id, "file_path": it.file, "caption": it.caption, "category": it.category,
             "media_type": it.media_type, "width": it.width, "height": it.height, "duration": it.duration},
            ensure_ascii=False, indent=1), encoding="utf-8")
    return items
