"""Geometry, timing and format of single encodes with the real ffmpeg."""
from pathlib import Path

import pytest

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.media import probe_video
from vidtune.samples import ffmpeg_run, make_clip, make_image, make_rotated_clip
from vidtune.transcode.encode import encode_image, encode_video
from vidtune.transcode.profiles import get_profile

P720 = get_profile("wan-720p")


def white_clip(tmp_path: Path, w: int, h: int, seconds: float = 1.0, **kw) -> Path:
    return make_clip(tmp_path / f"white-{w}x{h}.mp4", w, h, seconds, fps=kw.pop("fps", 25), source="color=c=white", **kw)


@pytest.mark.parametrize("w,h,expected_x0,expected_y0", [
    (1920, 1080, 0, 0),          # same aspect: fills the canvas
    (720, 512, 134, 0),          # wider-than-tall 1.41: bars left and right
    (1080, 1920, 438, 0),        # portrait: a narrow picture in the middle
    (1920, 800, 0, 93),          # cinemascope: bars top and bottom
])
def test_picture_is_centred_on_black_bars(tmp_path, helpers, w, h, expected_x0, expected_y0):
    out = tmp_path / "out.mp4"
    r = encode_video(white_clip(tmp_path, w, h), out, P720, "clip")
    assert (r.width, r.height) == (1280, 720)
    img = helpers.frame_at(out, 3)
    x0, y0, x1, y1 = helpers.picture_box(img)
    assert abs(x0 - expected_x0) <= 2 and abs(y0 - expected_y0) <= 2
    assert abs((1279 - x1) - x0) <= 2 and abs((719 - y1) - y0) <= 2      # centred
    if x0 > 4:
        assert img[:, : x0 - 2].max() < 20 and img[:, x1 + 3:].max() < 20   # the bars are black
    if y0 > 4:
        assert img[: y0 - 2].max() < 20 and img[y1 + 3:].max() < 20


def test_rotation_metadata_is_honoured(tmp_path, helpers):
    src = make_rotated_clip(tmp_path / "rotated.mp4", 320, 240, rotation=90)  # shown portrait 240x320
    assert probe_video(src).rotation == 90
    out = tmp_path / "out.mp4"
    encode_video(src, out, P720, "rotated")
    x0, y0, x1, y1 = helpers.picture_box(helpers.frame_at(out, 3))
    assert (y0, y1) == (0, 719) and abs((x1 - x0 + 1) - 540) <= 2   # 240x320 fitted to 540x720
    assert probe_video(out).rotation == 0


def test_duration_fps_and_max_duration(tmp_path):
    src = make_clip(tmp_path / "c.mp4", 640, 360, 3.0, fps=30)
    out = tmp_path / "o.mp4"
    r = encode_video(src, out, get_profile("wan-480p"), "c")
    assert (r.width, r.height, r.fps) == (832, 480, 16.0) and abs(r.duration - 3.0) < 0.1
    r = encode_video(src, tmp_path / "o2.mp4", get_profile("wan-480p", max_duration=2.0), "c")
    assert abs(r.duration - 2.0) < 0.1
    r = encode_video(src, tmp_path / "o3.mp4", P720, "c")   # no profile fps: the source rate is kept
    assert r.fps == 30.0 and abs(r.duration - 3.0) < 0.1


def test_ten_bit_odd_size_and_variable_rate_sources(tmp_path):
    ten = make_clip(tmp_path / "ten.mp4", 721, 405, 1.0, pix_fmt="yuv420p10le")
    assert probe_video(ten).bit_depth == 10
    out = tmp_path / "o.mp4"
    encode_video(ten, out, P720, "ten")
    info = probe_video(out)
    assert (info.width, info.height, info.pix_fmt, info.codec) == (1280, 720, "yuv420p", "h264")
    vfr = tmp_path / "vfr.mp4"   # 30 fps for a second, then every third frame: gaps in the timestamps
    ffmpeg_run(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-t", "3", "-vf",
                r"select='lt(n\,30)+not(mod(n\,3))'", "-fps_mode", "vfr", "-c:v", "libx264", str(vfr)])
    r = encode_video(vfr, tmp_path / "o2.mp4", get_profile("wan-480p"), "vfr")
    assert r.fps == 16.0 and abs(r.duration - 3.0) < 0.2


def test_images_go_to_png_on_the_same_canvas(tmp_path, helpers):
    import cv2

    src = make_image(tmp_path / "p.jpg", 600, 800)
    out = tmp_path / "p.png"
    encode_image(src, out, P720, "p")
    img = cv2.imread(str(out))
    assert img.shape == (720, 1280, 3)
    assert img[:, :200].max() < 5 and img[:, -200:].max() < 5       # portrait: black left and right
    assert img[:, 640].max() > 200                                   # picture in the middle


@pytest.mark.parametrize("content,reason", [
    (b"", "not a readable video"),
    (b"#EXTM3U\n#EXTINF:3,\nfile:/etc/hostname\n#EXT-X-ENDLIST\n", "not a readable video"),   # a playlist
    (b"ffconcat version 1.0\nfile '/etc/hostname'\n", "not a readable video"),                # a concat list
])
def test_inputs_that_could_reach_other_files_are_refused(tmp_path, content, reason):
    src = tmp_path / "sneaky.mp4"
    src.write_bytes(content)
    with pytest.raises(InvalidArgument, match=f"sneaky.mp4: {reason}"):
        encode_video(src, tmp_path / "o.mp4", P720, str(src))


def test_truncated_video_fails_with_a_reason(tmp_path):
    good = make_clip(tmp_path / "g.mp4", 320, 240, 2.0)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(InvalidArgument, match="bad.mp4"):
        encode_video(bad, tmp_path / "o.mp4", P720, "bad.mp4")
