"""Per-caption text features, computed for the whole table at once over code points in NumPy.

Rules and statistics both read these columns, so they are computed once and stored in the manifest. The
captions' UTF-8 bytes are taken straight from the Arrow buffers, decoded once per chunk of rows into a
uint32 code-point array, and every feature is a mask, a cumulative sum or a sort over that array: no
per-row Python loop (200,000 captions of ~800 characters take a few seconds).

Words are whitespace-separated tokens (Korean eojeol), identified by a 64-bit hash of their code points;
the morphological analysis for content words lives in stats.py because it is far more expensive.
"""
from __future__ import annotations

import codecs
import functools
import os
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
    """The captions as one large_string array, nulls as "" (copied only when that needs a copy)."""
    col = table.column("caption") if isinstance(table, pa.Table) else table
    if col.type != pa.large_string():
        col = col.cast(pa.large_string())
    if col.null_count:
        col = pc.fill_null(col, "")
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _chunks(caps: pa.Array):
    """(first row, code points, char offsets of the chunk's rows) for consecutive row ranges."""
    n = len(caps)
    if n == 0:
        return
    caps = caption_array(caps)  # nulls as "": a null slot may still span bytes
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
        text = codecs.utf_8_decode(memoryview(data[offs[row]:offs[stop]]), "strict", True)[0]
        # UTF-16 halves every later pass; a chunk with characters beyond U+FFFF (surrogate pairs) is
        # decoded to UTF-32 instead, so every code point stays one element.
        units = text.encode("utf-16-le")
        cps = np.frombuffer(units, np.uint16) if len(units) == 2 * len(text) else \
            np.frombuffer(text.encode("utf-32-le"), np.uint32)
        yield row, cps, char_offs[row:stop + 1] - char_offs[row]
        row = stop


def _row_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of `values` over each row's [start, end) (empty rows give 0), in one pass (no prefix sum)."""
    n_rows = offsets.size - 1
    out = np.zeros(n_rows, dtype=np.int64)
    filled = offsets[1:] > offsets[:-1]
    if values.size and filled.any():
        out[filled] = np.add.reduceat(values, offsets[:-1][filled], dtype=np.int64)
    return out


_BASE = 0x9E3779B97F4A7C15          # odd, so it has an inverse modulo 2**64
_BASE_INV = pow(_BASE, -1, 1 << 64)


@functools.lru_cache(maxsize=4)
def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE**i and BASE**-i modulo 2**64 for i < n (n rounded up so few sizes are ever built)."""
    pw, inv = np.empty(n, np.uint64), np.empty(n, np.uint64)
    pw[0] = inv[0] = 1
    step, step_inv = np.uint64(_BASE), np.uint64(_BASE_INV)
    with np.errstate(over="ignore"):
        filled = 1
        while filled < n:  # doubling: pw[k + filled] = pw[k] * BASE**filled
            take = min(filled, n - filled)
            pw[filled:filled + take] = pw[:take] * step
            inv[filled:filled + take] = inv[:take] * step_inv
            step, step_inv = step * step, step_inv * step_inv
            filled += take
    return pw, inv


def _chunk_words(cps: np.ndarray, offsets: np.ndarray, space: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each word, 64-bit hash of each word) for one chunk, in text order.

    A word's hash is a polynomial over its code points taken from one prefix sum: sum(c[i] * B**i) over
    [start, end), times B**-start, so equal words hash alike wherever they stand."""
    if cps.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    boundary = np.zeros(cps.size + 1, bool)  # a word cannot run over a row's end
    boundary[offsets] = True
    edge = np.empty(cps.size + 1, bool)  # is position i a word start (or a word end, below)?
    edge[0] = ~space[0]
    np.logical_and(~space[1:], space[:-1] | boundary[1:-1], out=edge[1:-1])
    edge[-1] = False
    starts = np.flatnonzero(edge[:-1])
    edge[1:] = ~space & (np.append(space[1:], True) | boundary[1:])
    edge[0] = False
    ends = np.flatnonzero(edge)
    pw, inv = _powers(1 << max(10, int(cps.size).bit_length()))
    with np.errstate(over="ignore"):
        prefix = np.empty(cps.size + 1, np.uint64)
        prefix[0] = 0
        np.multiply(cps, pw[:cps.size], out=prefix[1:], dtype=np.uint64)
        np.cumsum(prefix[1:], out=prefix[1:])
        h = (prefix[ends] - prefix[starts]) * inv[starts]
    # Words are in row order: count each row's words (few rows to look up), then repeat its number.
    per_row = np.diff(np.searchsorted(starts, offsets))
    return np.repeat(np.arange(offsets.size - 1, dtype=np.int64), per_row), h


def _parallel(fn, chunks) -> list:
    """fn(*chunk) for every chunk on all cores (NumPy's kernels release the GIL, so threads overlap), with
    few chunks in flight so the decoded text never sits in memory all at once."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(4, os.cpu_count() or 1))
    out, pending = [], deque()
    with ThreadPoolExecutor(workers) as pool:
        for chunk in chunks:
            pending.append(pool.submit(fn, *chunk))
            if len(pending) >= 2 * workers:
                out.append(pending.popleft().result())
        out.extend(f.result() for f in pending)
    return out


def _per_chunk_words(caps: pa.Array, reduce) -> list:
    """reduce(row of each word, hash of each word) for every chunk of captions, on all cores."""
    lut = _classes()

    def one(first_row, cps, offsets):
        r, h = _chunk_words(cps, offsets, (lut[cps] & _SPACE) > 0)
        return reduce(r + first_row, h)

    return _parallel(one, _chunks(caps))


def word_types(caps: pa.Array, group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(words, distinct words) of each group of rows (row i in group[i]), and of all rows as entry n_groups.

    Each chunk reduces its words to their distinct hashes per group before anything is gathered, so the
    corpus's tens of millions of words never sit in one array."""
    def reduce(rows, h):
        g = group[rows]
        return np.bincount(g, minlength=n_groups), [np.unique(h[g == k]) for k in range(n_groups)]

    parts = _per_chunk_words(caps, reduce)
    tokens = np.zeros(n_groups + 1, np.int64)
    types = np.zeros(n_groups + 1, np.int64)
    per_group = []
    for k in range(n_groups):
        tokens[k] = sum(int(c[k]) for c, _ in parts)
        per_group.append(np.unique(np.concatenate([u[k] for _, u in parts] + [np.zeros(0, np.uint64)])))
        types[k] = per_group[-1].size
    tokens[n_groups] = tokens[:n_groups].sum()
    types[n_groups] = np.unique(np.concatenate(per_group + [np.zeros(0, np.uint64)])).size
    return tokens, types


def _distinct_per_row(rows: np.ndarray, keys: np.ndarray, n_rows: int) -> np.ndarray:
    """How many distinct keys each row has. Rows are chunk-local (< 2**24), so (row, 40 bits of the key)
    packs into one uint64 and a plain sort (no argsort) finds the distinct pairs."""
    if keys.size == 0:
        return np.zeros(n_rows, dtype=np.int64)
    packed = np.sort((rows.astype(np.uint64) << np.uint64(40)) | (keys & np.uint64((1 << 40) - 1)))
    first = np.empty(packed.size, bool)
    first[0] = True
    np.not_equal(packed[1:], packed[:-1], out=first[1:])
    return np.bincount((packed[first] >> np.uint64(40)).astype(np.int64), minlength=n_rows)


def _max_runs(cps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Longest run of one repeated character per row (e.g. 'ㅋㅋㅋㅋㅋ' or '!!!!!!')."""
    n_rows = offsets.size - 1
    out = np.minimum(np.diff(offsets), 1)
    if cps.size < 2:
        return out
    same = cps[1:] == cps[:-1]
    ends = offsets[1:-1] - 1  # a run never crosses into the next row
    same[ends[(ends >= 0) & (ends < same.size)]] = False
    pos = np.flatnonzero(same)  # i where c[i + 1] repeats c[i]: few in text, so the rest is cheap
    if pos.size:
        new_run = np.empty(pos.size, bool)
        new_run[0] = True
        np.not_equal(pos[1:], pos[:-1] + 1, out=new_run[1:])
        run_starts = np.flatnonzero(new_run)
        lengths = np.diff(np.append(run_starts, pos.size)) + 1
        rows = np.searchsorted(offsets, pos[run_starts], side="right") - 1
        np.maximum.at(out, rows, lengths)
    return out[:n_rows]


# Per class bits: hangul, special and space counts packed in one int64 (21 bits each), summed per row at once.
_FIELD = 21


@functools.lru_cache(maxsize=1)
def _packed_weights() -> np.ndarray:
    w = np.zeros(256, np.int64)
    for bits in range(256):
        w[bits] = ((bits & _HANGUL) > 0) + (((bits & _SPECIAL) > 0) << _FIELD) + (((bits & _SPACE) > 0) << 2 * _FIELD)
    return w


def _chunk_features(first: int, cps: np.ndarray, offsets: np.ndarray) -> tuple[int, dict[str, np.ndarray]]:
    m = offsets.size - 1
    lut = _classes()
    cls = lut[cps]
    space = (cls & _SPACE) > 0
    lengths = np.diff(offsets)
    if lengths.max(initial=0) < 1 << _FIELD:
        packed = _row_sums(_packed_weights()[cls], offsets)
        mask = (1 << _FIELD) - 1
        hangul, special, spaces = packed & mask, (packed >> _FIELD) & mask, packed >> 2 * _FIELD
    else:  # a caption of 2 million characters or more: one sum per class
        hangul, special, spaces = (_row_sums(((cls & b) > 0).view(np.int8), offsets)
                                   for b in (_HANGUL, _SPECIAL, _SPACE))
    rows, codes = _chunk_words(cps, offsets, space)
    words = np.bincount(rows, minlength=m)
    repeat = np.zeros(m)
    # n-gram repetition: share of a caption's word 3-grams that repeat an earlier 3-gram of it.
    if rows.size >= NGRAM:
        ok = rows[:-(NGRAM - 1)] == rows[NGRAM - 1:]
        grow = rows[:-(NGRAM - 1)][ok]
        grams = np.zeros(grow.size, np.uint64)
        with np.errstate(over="ignore"):
            for i in range(NGRAM):  # a polynomial over the words' hashes
                grams = grams * np.uint64(_BASE) + codes[i:codes.size - (NGRAM - 1) + i][ok]
        total = np.bincount(grow, minlength=m)
        distinct = _distinct_per_row(grow, grams, m)
        repeat = np.where(total > 0, 1.0 - distinct / np.maximum(total, 1), 0.0)
    return first, {"chars": lengths, "hangul": hangul, "special": special, "spaces": spaces,
                   "runs": _max_runs(cps, offsets), "words": words,
                   "unique": _distinct_per_row(rows, codes, m), "repeat": repeat}


def caption_features(table: pa.Table | pa.Array) -> dict[str, np.ndarray]:
    """Every feature column for the captions of `table`, as NumPy arrays of its length."""
    caps = caption_array(table)
    n = len(caps)
    out = {k: np.zeros(n, np.int64) for k in ("chars", "hangul", "special", "spaces", "runs", "words", "unique")}
    out["repeat"] = np.zeros(n)
    for first, part in _parallel(_chunk_features, _chunks(caps)):
        sl = slice(first, first + part["chars"].size)
        for k, v in part.items():
            out[k][sl] = v
    chars = out["chars"]
    non_space = chars - out["spaces"]
    denom = np.maximum(non_space, 1)
    return {
        "caption_chars": chars,
        "caption_words": out["words"],
        "caption_unique_words": out["unique"],
        "hangul_ratio": np.where(non_space > 0, out["hangul"] / denom, 0.0),
        "special_ratio": np.where(non_space > 0, out["special"] / denom, 0.0),
        "max_char_run": out["runs"],
        "ngram_repeat_ratio": out["repeat"],
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
