"""Per-caption text features, computed for the whole table at once over code points in NumPy.

Rules and statistics both read these columns, so they are computed once and stored in the manifest. The
captions' UTF-8 bytes are taken straight from the Arrow buffers, decoded once per chunk of rows into a
uint32 code-point array, and every feature is a mask, a cumulative sum or a sort over that array: no
per-row Python loop (200,000 captions of ~800 characters take a few seconds).

Words are whitespace-separated tokens (Korean eojeol), identified by a 64-bit hash of their code points;
the morphological analysis for content words lives in stats.py because it is far more expensive.
"""
from __future__ import annotations

import functools
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FEATURE_COLUMNS = ("caption_chars", "caption_words", "caption_unique_words", "hangul_ratio",
                   "special_ratio", "max_char_run", "ngram_repeat_ratio")
NGRAM = 3
CHUNK_CHARS = 1_000_000  # code points decoded at once (~4 MB): keeps the per-chunk sorts in cache
# Punctuation that ordinary captions use; any other non-letter, non-digit, non-space character is special.
ORDINARY_PUNCT = set(".,!?'\"()[]-:;%~·…/&+")
_HANGUL, _SPACE, _SPECIAL = 1, 2, 4
_MASK64 = (1 << 64) - 1


@functools.lru_cache(maxsize=1)
def _classes() -> np.ndarray:
    """Class bits of every Unicode code point (Hangul, whitespace, special), built once (~0.5 s)."""
    lut = np.full(0x110000, _SPECIAL, dtype=np.uint8)
    for cp in range(0x30000):
        ch = chr(cp)
        if ch.isspace():
            lut[cp] = _SPACE
        elif ch.isalnum() or ch in ORDINARY_PUNCT or unicodedata.category(ch) in ("Mn", "Mc"):
            lut[cp] = 0
    for lo, hi in ((0xAC00, 0xD7A3), (0x1100, 0x11FF), (0x3130, 0x318F)):
        lut[lo:hi + 1] = _HANGUL
    return lut


def caption_array(table: pa.Table) -> pa.Array:
    col = table.column("caption") if isinstance(table, pa.Table) else table
    col = pc.fill_null(col.cast(pa.large_string()), "")
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _chunks(caps: pa.Array):
    """(first row, code points, char offsets of the chunk's rows) for consecutive row ranges."""
    n = len(caps)
    if n == 0:
        return
    caps = caps.cast(pa.large_string())
    buffers = caps.buffers()
    offs = np.frombuffer(buffers[1], dtype=np.int64)[caps.offset:caps.offset + n + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    # Character offsets from Arrow's (C++) per-row character counts: no per-byte pass needed.
    char_offs = np.concatenate(([0], np.cumsum(pc.utf8_length(caps).to_numpy(zero_copy_only=False),
                                               dtype=np.int64)))
    row = 0
    while row < n:
        # Rows up to ~CHUNK_CHARS characters.
        stop = int(np.searchsorted(char_offs, char_offs[row] + CHUNK_CHARS, side="right")) - 1
        stop = min(n, max(stop, row + 1))
        raw = data[offs[row]:offs[stop]]
        cps = np.frombuffer(raw.tobytes().decode("utf-8").encode("utf-32-le"), dtype=np.uint32)
        yield row, cps, char_offs[row:stop + 1] - char_offs[row]
        row = stop


def _per_row(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of a per-character mask over each row's [start, end) (empty rows give 0)."""
    csum = np.concatenate(([0], np.cumsum(mask, dtype=np.int64)))
    return csum[offsets[1:]] - csum[offsets[:-1]]


def _mix(*arrays: np.ndarray) -> np.ndarray:
    """A 64-bit hash of several integer columns (FNV-style; collisions are negligible for counting)."""
    h = np.full(arrays[0].shape, 0xCBF29CE484222325, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for a in arrays:
            h ^= a.astype(np.uint64)
            h *= np.uint64(0x100000001B3)
            h ^= h >> np.uint64(29)
    return h


_POW = np.array([pow(0x9E3779B97F4A7C15, i + 1, 1 << 64) for i in range(256)], dtype=np.uint64)


def _chunk_words(cps: np.ndarray, offsets: np.ndarray, space: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each word, 64-bit hash of each word) for one chunk, in text order."""
    if cps.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    row_start = np.zeros(cps.size, bool)
    starts = offsets[:-1][offsets[:-1] < offsets[1:]]
    row_start[starts] = True
    prev_space = np.concatenate(([True], space[:-1]))
    word_start = ~space & (prev_space | row_start)
    keep = ~space
    ws = word_start[keep]
    c = cps[keep].astype(np.uint64)
    idx = np.arange(c.size)
    first = np.flatnonzero(ws)
    word_of = np.cumsum(ws) - 1
    pos = (idx - first[word_of]) & 255
    with np.errstate(over="ignore"):
        h = np.add.reduceat(c * _POW[pos], first) if first.size else np.zeros(0, np.uint64)
    lengths = np.diff(np.concatenate((first, [c.size])))
    word_rows = np.searchsorted(offsets, np.flatnonzero(word_start), side="right") - 1
    return word_rows.astype(np.int64), _mix(h, lengths)


def word_tokens(caps: pa.Array) -> tuple[np.ndarray, np.ndarray, None]:
    """(row of each word, hash of each word, None) over all captions; equal words share a hash."""
    rows, hashes = [], []
    lut = _classes()
    for first_row, cps, offsets in _chunks(caps):
        r, h = _chunk_words(cps, offsets, (lut[cps] & _SPACE) > 0)
        rows.append(r + first_row)
        hashes.append(h)
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64), None
    return np.concatenate(rows), np.concatenate(hashes), None


def _distinct_per_row(rows: np.ndarray, keys: np.ndarray, n_rows: int) -> np.ndarray:
    """How many distinct keys each row has. Rows are chunk-local (< 2**24), so (row, 40 bits of the key)
    packs into one uint64 and a plain sort (no argsort) finds the distinct pairs."""
    if keys.size == 0:
        return np.zeros(n_rows, dtype=np.int64)
    packed = np.sort((rows.astype(np.uint64) << np.uint64(40)) | (keys & np.uint64((1 << 40) - 1)))
    first = np.concatenate(([True], packed[1:] != packed[:-1]))
    return np.bincount((packed[first] >> np.uint64(40)).astype(np.int64), minlength=n_rows)


def _max_runs(cps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Longest run of one repeated character per row (e.g. 'ㅋㅋㅋㅋㅋ' or '!!!!!!')."""
    n_rows = offsets.size - 1
    lengths = np.diff(offsets)
    out = np.minimum(lengths, 1)
    if cps.size < 2:
        return out
    same = cps[1:] == cps[:-1]
    ends = offsets[1:-1] - 1  # a run never crosses into the next row
    same[ends[(ends >= 0) & (ends < same.size)]] = False
    edges = np.diff(np.concatenate(([0], same.view(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if starts.size:
        rows = np.searchsorted(offsets, starts, side="right") - 1
        np.maximum.at(out, rows, stops - starts + 1)
    return out[:n_rows]


def caption_features(table: pa.Table | pa.Array) -> dict[str, np.ndarray]:
    """Every feature column for the captions of `table`, as NumPy arrays of its length."""
    caps = caption_array(table)
    n = len(caps)
    lut = _classes()
    chars, hangul, special, spaces, runs, words, unique = (np.zeros(n, np.int64) for _ in range(7))
    repeat = np.zeros(n)
    for first, cps, offsets in _chunks(caps):
        m = offsets.size - 1
        sl = slice(first, first + m)
        cls = lut[cps]
        space = (cls & _SPACE) > 0
        chars[sl] = np.diff(offsets)
        hangul[sl] = _per_row((cls & _HANGUL) > 0, offsets)
        special[sl] = _per_row((cls & _SPECIAL) > 0, offsets)
        spaces[sl] = _per_row(space, offsets)
        runs[sl] = _max_runs(cps, offsets)
        rows, codes = _chunk_words(cps, offsets, space)
        words[sl] = np.bincount(rows, minlength=m)
        unique[sl] = _distinct_per_row(rows, codes, m)
        # n-gram repetition: share of a caption's word 3-grams that repeat an earlier 3-gram of it.
        if rows.size >= NGRAM:
            ok = rows[:-(NGRAM - 1)] == rows[NGRAM - 1:]
            grow = rows[:-(NGRAM - 1)][ok]
            grams = _mix(*(codes[i:codes.size - (NGRAM - 1) + i][ok] for i in range(NGRAM)))
            total = np.bincount(grow, minlength=m)
            distinct = _distinct_per_row(grow, grams, m)
            repeat[sl] = np.where(total > 0, 1.0 - distinct / np.maximum(total, 1), 0.0)
    non_space = chars - spaces
    denom = np.maximum(non_space, 1)
    return {
        "caption_chars": chars,
        "caption_words": words,
        "caption_unique_words": unique,
        "hangul_ratio": np.where(non_space > 0, hangul / denom, 0.0),
        "special_ratio": np.where(non_space > 0, special / denom, 0.0),
        "max_char_run": runs,
        "ngram_repeat_ratio": repeat,
    }


def with_features(table: pa.Table) -> pa.Table:
    """`table` with the caption feature columns (re)computed."""
    for name, values in caption_features(table).items():
        arr = pa.array(values)
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    return table
