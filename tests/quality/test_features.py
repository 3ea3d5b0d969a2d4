"""Caption features against a plain per-row Python definition, on hostile captions and across chunk edges."""
from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from vidtune.quality import features
from vidtune.quality.features import caption_features, word_types

HOSTILE = ["", None, "  ", "\t\n", "😀😀😀 abc", "e\u0301e\u0301 café", "ㅋ" * 40, "가 가 가 가 가 가", "!!!!!!!!!!!!",
           "단어 단어\u3000단어\xa0끝", "𠀀𠀁 漢字 テスト", "x", " 앞 공백", "뒤 공백 ", "\u200b제로폭", "a" * 300,
           "산 바다 산 바다 산 바다 산 바다", "마침표.다음 문장", "탭\t구분\t단어"]


def reference(caption: str | None) -> dict:
    """The features of one caption, row by row in Python (the definition the columnar code must match)."""
    text = caption or ""
    cls = features._classes()
    bits = [int(cls[ord(ch)]) for ch in text]
    words, word = [], ""
    for ch, b in zip(text, bits):
        if b & features._SPACE:
            if word:
                words.append(word)
            word = ""
        else:
            word += ch
    if word:
        words.append(word)
    run = best = 0
    for i, ch in enumerate(text):
        run = run + 1 if i and text[i - 1] == ch else 1
        best = max(best, run)
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    non_space = sum(1 for b in bits if not b & features._SPACE)
    share = (lambda k: sum(1 for b in bits if b & k) / non_space if non_space else 0.0)
    return {"caption_chars": len(text), "caption_words": len(words), "caption_unique_words": len(set(words)),
            "hangul_ratio": share(features._HANGUL), "special_ratio": share(features._SPECIAL),
            "max_char_run": best, "ngram_repeat_ratio": 1 - len(set(grams)) / len(grams) if grams else 0.0}


@pytest.mark.parametrize("chunk_bytes", [features.CHUNK_BYTES, 37])
def test_features_match_the_per_row_definition(monkeypatch, chunk_bytes):
    monkeypatch.setattr(features, "CHUNK_BYTES", chunk_bytes)  # small tasks: rows land on every edge
    rng = random.Random(0)
    pool = ["산", "바다", "강", "ㅋㅋㅋ", "!!", "A", "숲길", " ", "  ", "\n", "😀", "漢"]
    captions = HOSTILE + ["".join(rng.choice(pool) for _ in range(rng.randint(0, 30))) for _ in range(200)]
    got = caption_features(pa.table({"caption": pa.array(captions, pa.large_string())}))
    for i, caption in enumerate(captions):
        for name, want in reference(caption).items():
            assert got[name][i] == pytest.approx(want), (name, caption)


@pytest.mark.parametrize("chunk_bytes", [features.CHUNK_BYTES, 5])
def test_word_types_count_equal_words_once_per_group_and_overall(monkeypatch, chunk_bytes):
    monkeypatch.setattr(features, "CHUNK_BYTES", chunk_bytes)  # small tasks: a group's words span tasks
    caps = pa.array(["산 바다 산", "바다 산맥 산", None, "산맥  산맥", "😀 산"], pa.large_string())
    tokens, types = word_types(caps, np.array([0, 1, 1, 0, 1]), 2)
    assert tokens.tolist() == [5, 5, 10]
    assert types.tolist() == [3, 4, 4]  # {산, 바다, 산맥}, {바다, 산맥, 산, 😀}, all four


def test_a_read_only_package_loads_the_kernels_it_was_built_with_instead_of_compiling(tmp_path):
    """As in the container image: the package cannot be written, so its kernels (compiled by warm() when
    the image was built) are copied into a cache below the temporary directory and loaded from there."""
    import os
    import subprocess
    import sys

    features.warm()  # the package's own __pycache__ now holds the compiled kernels, as after the image build
    code = (
        "import os, tempfile\n"
        f"tempfile.tempdir = {str(tmp_path)!r}\n"
        "real = os.access\n"
        "os.access = lambda p, mode, **kw: (False if mode == os.W_OK and p.endswith('quality')\n"
        "                                   else real(p, mode, **kw))\n"
        "from vidtune.quality import features as f\n"
        "f.warm()\n"
        "s = f._features_kernel.stats\n"
        "print(sum(s.cache_misses.values()), sum(s.cache_hits.values()), s.cache_path)\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         timeout=600).stdout.split()
    assert out[:2] == ["0", "1"], out  # no compile: one kernel loaded from the cache
    assert out[2].startswith(str(tmp_path / "vidtune-numba-cache")), out


def test_a_caption_that_is_not_utf8_is_named():
    broken = pa.Array.from_buffers(pa.large_string(), 2, [None, pa.py_buffer(np.array([0, 3, 5], np.int64)),
                                                          pa.py_buffer(b"\xec\x82\xb0\xff\xfe")])
    beyond_unicode = pa.Array.from_buffers(pa.large_string(), 2, [None, pa.py_buffer(np.array([0, 1, 5], np.int64)),
                                                                  pa.py_buffer(b"a\xf4\x90\x80\x80")])
    with pytest.raises(ValueError, match="row 1 is not valid UTF-8"):
        caption_features(broken)
    with pytest.raises(ValueError, match="row 1 is not valid UTF-8"):
        word_types(broken, np.zeros(2, np.int64), 1)
    with pytest.raises(ValueError, match="row 1 is not valid UTF-8"):
        caption_features(beyond_unicode)  # U+110000: past the class table, so never looked up


def test_a_column_in_chunks_gives_the_features_and_word_counts_of_one_array():
    """Parquet reads give several chunks; slices start inside their buffers. Rows keep their place."""
    arr = pa.array(HOSTILE * 3, pa.large_string())
    chunked = pa.chunked_array([arr.slice(0, 7), arr.slice(7, 0), arr.slice(7, 20), arr.slice(27)])
    whole, got = caption_features(arr), caption_features(pa.table({"caption": chunked}))
    for name, want in whole.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    group = np.arange(len(arr)) % 2
    for a, b in zip(word_types(chunked, group, 2), word_types(arr, group, 2)):
        np.testing.assert_array_equal(a, b)
    broken = pa.Array.from_buffers(pa.large_string(), 1, [None, pa.py_buffer(np.array([0, 1], np.int64)),
                                                          pa.py_buffer(b"\xff")])
    with pytest.raises(ValueError, match=f"row {len(arr)} is not valid UTF-8"):  # numbered in the table
        caption_features(pa.chunked_array([arr, broken]))


def test_word_types_past_the_first_hash_set_size():
    """10,000 distinct words in one range of rows: the kernel's set is rehashed several times."""
    words = [f"w{i}" for i in range(10_000)]
    caps = pa.array([" ".join(words), " ".join(words[5000:]) + " 새"], pa.large_string())
    tokens, types = word_types(caps, np.array([0, 1]), 2)
    assert tokens.tolist() == [10_000, 5001, 15_001]
    assert types.tolist() == [10_000, 5001, 10_001]
    assert caption_features(caps)["caption_unique_words"].tolist() == [10_000, 5001]
