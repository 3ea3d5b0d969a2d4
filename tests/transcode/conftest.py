from pathlib import Path

import av
import numpy as np
import pytest


def frame_at(path: Path, index: int = 5) -> np.ndarray:
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == index:
                return f.to_ndarray(format="rgb24")
    raise AssertionError(f"{path} has fewer than {index + 1} frames")


def picture_box(img: np.ndarray, threshold: int = 100) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the pixels brighter than `threshold`: where the picture sits on the canvas."""
    mask = img.max(axis=2) > threshold
    ys, xs = np.where(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


@pytest.fixture
def helpers():
    class H:
        frame_at = staticmethod(frame_at)
        picture_box = staticmethod(picture_box)
    return H
