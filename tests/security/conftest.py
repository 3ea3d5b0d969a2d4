"""Fixtures for the trust-boundary tests: local files an attacker would want read, and a record of every
time this process (or a child it starts) touches them."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from canary import SECRET  # noqa: E402

from vidtune.platform.access import AccessPolicy  # noqa: E402
from vidtune.platform.storage import Storage  # noqa: E402

_touched: list[tuple[str, str]] = []
_root: list[str] = []


def _audit(event: str, args) -> None:
    # Opens, directory listings, copies and subprocess command lines that name a canary path.
    if not _root or event not in ("open", "os.listdir", "os.scandir", "shutil.copyfile", "subprocess.Popen"):
        return
    names = args[1] if event == "subprocess.Popen" else args[:2] if event == "shutil.copyfile" else args[:1]
    for name in names or ():
        if isinstance(name, (str, bytes, Path)) and _root[0] in str(name):
            _touched.append((event, str(name)))


sys.addaudithook(_audit)


@pytest.fixture(scope="session")
def canary_dir(tmp_path_factory) -> Path:
    """A directory of local files (a video, an image, a text file, weights, a sub-directory), each holding
    the secret; none of them may ever be read by a service with local paths off."""
    root = tmp_path_factory.mktemp("canary")
    from vidtune.evaluate.videoio import write_mp4
    import numpy as np

    frames = np.zeros((9, 64, 64, 3), dtype=np.uint8)
    write_mp4(frames, root / "clip.mp4")
    (root / "dir").mkdir()
    write_mp4(frames, root / "dir" / "other.mp4")
    (root / "secret.txt").write_bytes(SECRET + b"\n" + str(root / "clip.mp4").encode())
    (root / "frame.png").write_bytes(_png_with(SECRET))
    (root / "weights").mkdir()
    (root / "weights" / "model.safetensors").write_bytes(SECRET)
    with open(root / "clip.mp4", "ab") as f:
        f.write(SECRET)
    return root


def _png_with(secret: bytes) -> bytes:
    import io

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("secret", secret.decode())
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


@pytest.fixture
def touched(canary_dir):
    """The list of (event, path) touches of the canary directory during one test."""
    _root[:] = [str(canary_dir)]
    _touched.clear()
    yield _touched
    _root.clear()


@pytest.fixture
def service_storage(object_store, storage, monkeypatch) -> Storage:
    """The storage of a service running as on a cluster: local paths off."""
    monkeypatch.delenv("VIDTUNE_ALLOW_LOCAL_PATHS", raising=False)
    return Storage(storage.config, policy=AccessPolicy.from_env())
