"""Per-caption text features, computed by one compiled pass per caption over its UTF-8 bytes.

Rules and statistics both read these columns, so they are computed once and stored in the manifest. The
captions' bytes are read straight from the Arrow buffers by a numba kernel that decodes, classifies, counts
and hashes in a single pass (no decoded copy of the text, no per-row Python), on all cores.

Words are whitespace-separated tokens (Korean eojeol), identified by a 64-bit hash of their code points;
the morphological analysis for content words lives in stats.py because it is far more expensive.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_HERE = os.path.dirname(os.path.abspath(__file__))
_READ_ONLY = not os.environ.get("NUMBA_CACHE_DIR") and not os.access(_HERE, os.W_OK)
if _READ_ONLY:
    # Compiled kernels are cached next to this file; where the package is read-only (the container
    # image) they go to a temporary directory, so a process compiles them only when no other did before.
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "vidtune-numba-cache")
from numba import njit  # noqa: E402  (after the cache directory is chosen)


def _seed_cache() -> None:
    """Copy the kernels compiled when the image was built (warm() in its __pycache__) into the writable
    cache, so no process of that image compiles them. Numba checks each entry against this file's stamp
    and the machine, and compiles when one does not fit."""
    from numba.core.caching import _CacheLocator

    src = os.path.join(_HERE, "__pycache__")
    dst = os.path.join(os.environ["NUMBA_CACHE_DIR"], _CacheLocator.get_suitable_cache_subpath(__file__))
    if not os.path.isdir(src) or os.path.isdir(dst):
        return
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name.startswith("features.") and name.endswith((".nbi", ".nbc")):
            part = os.path.join(dst, f".{name}.{os.getpid()}")
            shutil.copyfile(os.path.join(src, name), part)
            os.replace(part, os.path.join(dst, name))  # whole files only: processes may seed at once


if _READ_ONLY:
    _seed_cache()

FEATURE_COLUMNS = ("caption_chars", "caption_words", "caption_unique_words", "hangul_ratio",
                   "special_ratio", "max_char_run", "ngram_repeat_ratio")
NGRAM = 3
CHUNK_BYTES = 4_000_000  # bytes of captions per task: enough tasks to keep every core busy
# Punctuation that ordinary captions use; any other non-letter, non-digit, non-space character is special.
ORDINARY_PUNCT = set(".,!?'\"()[]-:;%~·…/&+")
_HANGUL, _SPACE, _SPECIAL = 1, 2, 4


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


def caption_array(table: pa.Table | pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """The captions as large_string chunks, nulls as "" (copied only when that needs a copy: chunks are
    never combined, which would copy every caption)."""
    col = table.column("caption") if isinstance(table, pa.Table) else table
    if isinstance(col, pa.Array):
        col = pa.chunked_array([col])
    if col.type != pa.large_string():
        col = col.cast(pa.large_string())
    if col.null_count:
        col = pc.fill_null(col, "")  # a null slot may still span bytes
    return col


def _tasks(caps: pa.ChunkedArray):
    """(first row of the chunk, its byte offsets, its UTF-8 bytes, lo, hi) for row ranges [lo, hi) of each
    chunk holding about CHUNK_BYTES; offsets and bytes are views of the Arrow buffers."""
    first = 0
    for chunk in caps.chunks:
        buffers = chunk.buffers()
        offs = np.frombuffer(buffers[1], dtype=np.int64)[chunk.offset:chunk.offset + len(chunk) + 1]
        data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
        lo = 0
        while lo < len(chunk):  # a caption longer than CHUNK_BYTES is a range of its own
            hi = int(np.searchsorted(offs, offs[lo] + CHUNK_BYTES, side="right")) - 1
            hi = min(len(chunk), max(hi, lo + 1))
            yield first, offs, data, lo, hi
            lo = hi
        first += len(chunk)


_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial word and 3-gram hashes
_KEY40 = np.uint64((1 << 40) - 1)     # distinct words and 3-grams per row are counted on 40 bits of the hash


@njit(cache=True, nogil=True)
def _scan_row(data, start, end, lut, words):
    """One caption's bytes data[start:end] in one pass: decode UTF-8, classify each code point, hash each
    word. Returns (chars, hangul, special, spaces, longest run, word count, ok) with the words' 64-bit hashes
    in words[:count]; `words` must hold _max_words(start, end)."""
    chars = hangul = special = spaces = 0
    run = best = 0
    prev = -1
    count = 0
    in_word = False
    h = pw = np.uint64(0)
    pos = start
    while pos < end:
        # UTF-8: the lead byte says how many continuation bytes (10xxxxxx) follow.
        b = np.int64(data[pos])
        width = 1 if b < 0x80 else 0 if b < 0xC2 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4 if b < 0xF5 else 0
        if width == 0 or pos + width > end:
            return chars, hangul, special, spaces, best, count, False
        cp = b if width == 1 else b & (0x7F >> width)
        for k in range(1, width):
            c = np.int64(data[pos + k])
            if c & 0xC0 != 0x80:
                return chars, hangul, special, spaces, best, count, False
            cp = (cp << 6) | (c & 0x3F)
        if cp > 0x10FFFF:  # beyond Unicode (and beyond the class table)
            return chars, hangul, special, spaces, best, count, False
        pos += width
        chars += 1
        bits = lut[cp]
        hangul += (bits & _HANGUL) > 0
        special += (bits & _SPECIAL) > 0
        run = run + 1 if cp == prev else 1  # runs of one repeated code point ('ㅋㅋㅋ', '!!!!')
        best = max(best, run)
        prev = cp
        if bits & _SPACE:  # whitespace ends a word
            spaces += 1
            if in_word:
                words[count] = h
                count += 1
                in_word = False
        else:  # the word's hash: sum of cp[i] * BASE**i over its code points, so equal words hash alike
            if not in_word:
                in_word, h, pw = True, np.uint64(0), np.uint64(1)
            h += np.uint64(cp) * pw
            pw *= _BASE
    if in_word:
        words[count] = h
        count += 1
    return chars, hangul, special, spaces, best, count, True


@njit(cache=True, nogil=True)
def _max_words(start, end):
    """A word takes a byte and, unless it ends the caption, a separator byte."""
    return (end - start) // 2 + 1


@njit(cache=True, nogil=True)
def _room(buf, size):
    """buf, or a larger one when it holds fewer than `size`: memory follows the longest caption only."""
    return buf if buf.size >= size else np.empty(max(size, 2 * buf.size), buf.dtype)


@njit(cache=True, nogil=True)
def _insert(keys, groups, bits, key, group):
    """Add (key, group) to the open-addressing set (keys, groups) of 2**bits slots (group -1: empty);
    returns 1 when it was not there yet."""
    mask = np.uint64((1 << bits) - 1)
    slot = (key * _BASE) >> np.uint64(64 - bits)  # the high bits: the keys' own low bits mix poorly
    while groups[slot] >= 0:
        if keys[slot] == key and groups[slot] == group:
            return 0
        slot = (slot + np.uint64(1)) & mask
    keys[slot], groups[slot] = key, group
    return 1


@njit(cache=True, nogil=True)
def _distinct(keys, count, slot_keys, slot_groups):
    """Distinct values of keys[:count], in a cleared set of at least twice `count` slots (probes stay
    short): a row's words are counted without sorting them."""
    bits = 1
    while 1 << bits < 2 * count:
        bits += 1
    slot_groups[:1 << bits] = -1
    n = 0
    for i in range(count):
        n += _insert(slot_keys, slot_groups, bits, keys[i], 0)
    return n


@njit(cache=True, nogil=True)
def _features_kernel(data, offs, lut, lo, hi, counts, repeat):
    """Features of rows [lo, hi) into counts[row] (chars, hangul, special, spaces, run, words, unique) and
    repeat[row]; returns the first row that is not valid UTF-8, or -1."""
    words = np.empty(1024, np.uint64)
    grams = np.empty(1024, np.uint64)
    slot_keys, slot_groups = np.empty(4096, np.uint64), np.empty(4096, np.int64)
    for r in range(lo, hi):
        words = _room(words, _max_words(offs[r], offs[r + 1]))
        chars, hangul, special, spaces, best, nw, ok = _scan_row(data, offs[r], offs[r + 1], lut, words)
        if not ok:
            return r
        # Word 3-grams: a polynomial over three consecutive word hashes, taken before keys are cut to 40 bits.
        grams = _room(grams, nw)
        slot_keys, slot_groups = _room(slot_keys, 4 * nw), _room(slot_groups, 4 * nw)
        ng = max(0, nw - (NGRAM - 1))
        for i in range(ng):
            grams[i] = ((words[i] * _BASE + words[i + 1]) * _BASE + words[i + 2]) & _KEY40
        for i in range(nw):
            words[i] &= _KEY40
        counts[r, 0], counts[r, 1], counts[r, 2], counts[r, 3] = chars, hangul, special, spaces
        counts[r, 4], counts[r, 5], counts[r, 6] = best, nw, _distinct(words, nw, slot_keys, slot_groups)
        # Share of the 3-grams that repeat an earlier 3-gram of the same caption.
        repeat[r] = 1.0 - _distinct(grams, ng, slot_keys, slot_groups) / ng if ng > 0 else 0.0
    return -1


@njit(cache=True, nogil=True)
def _words_kernel(data, offs, lut, lo, hi, group, tokens):
    """The distinct (64-bit word hash, group of its row) pairs of rows [lo, hi), with tokens[g] counting the
    words of group g; returns (hashes, groups, -1), or empty arrays and the first row that is not UTF-8."""
    words = np.empty(1024, np.uint64)
    bits, n = 12, 0
    keys, groups = np.zeros(1 << bits, np.uint64), np.full(1 << bits, -1, np.int64)
    for r in range(lo, hi):
        words = _room(words, _max_words(offs[r], offs[r + 1]))
        _, _, _, _, _, nw, ok = _scan_row(data, offs[r], offs[r + 1], lut, words)
        if not ok:
            return keys[:0], groups[:0], r
        g = group[r]
        tokens[g] += nw
        for i in range(nw):
            if 2 * (n + 1) > 1 << bits:  # at most half full, so probes stay short: rehash into twice the slots
                old_keys, old_groups = keys, groups
                bits += 1
                keys, groups = np.zeros(1 << bits, np.uint64), np.full(1 << bits, -1, np.int64)
                for j in range(old_keys.size):
                    if old_groups[j] >= 0:
                        _insert(keys, groups, bits, old_keys[j], old_groups[j])
            n += _insert(keys, groups, bits, words[i], g)
    used = groups >= 0
    return keys[used], groups[used], -1


def _not_utf8(row: int) -> ValueError:
    return ValueError(f"caption of row {row} is not valid UTF-8")


def _parallel(fn, items) -> list:
    """fn(*item) for every item on all cores (the kernels and NumPy's sorts release the GIL, so threads
    overlap), with few items in flight so their outputs never sit in memory all at once."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(4, os.cpu_count() or 1))
    out, pending = [], deque()
    with ThreadPoolExecutor(workers) as pool:
        for item in items:
            pending.append(pool.submit(fn, *item))
            if len(pending) >= 2 * workers:
                out.append(pending.popleft().result())
        out.extend(f.result() for f in pending)
    return out


def word_types(caps: pa.Array | pa.ChunkedArray, group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(words, distinct words) of each group of rows (row i in group[i]), and of all rows as entry n_groups.

    Each range of rows reduces its words to their distinct hashes per group (a hash set in the kernel, no
    sort) before anything is gathered, so the corpus's tens of millions of words never sit in one array."""
    lut = _classes()

    def reduce(first, offs, data, lo, hi):
        tokens = np.zeros(n_groups, np.int64)
        keys, groups, bad = _words_kernel(data, offs, lut, lo, hi, group[first:first + len(offs) - 1], tokens)
        if bad >= 0:
            raise _not_utf8(first + bad)
        return tokens, [keys[groups == k] for k in range(n_groups)]

    parts = _parallel(reduce, _tasks(caption_array(caps)))
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


def caption_features(table: pa.Table | pa.Array | pa.ChunkedArray) -> dict[str, np.ndarray]:
    """Every feature column for the captions of `table`, as NumPy arrays of its length."""
    caps = caption_array(table)
    lut = _classes()
    counts = np.zeros((len(caps), 7), np.int64)
    repeat = np.zeros(len(caps))

    def run(first, offs, data, lo, hi):
        end = first + len(offs) - 1  # the chunk's rows, written in place
        bad = _features_kernel(data, offs, lut, lo, hi, counts[first:end], repeat[first:end])
        if bad >= 0:
            raise _not_utf8(first + bad)

    _parallel(run, _tasks(caps))
    chars, hangul, special, spaces, runs, words, unique = counts.T
    non_space = chars - spaces
    denom = np.maximum(non_space, 1)
    return {
        "caption_chars": chars.copy(),
        "caption_words": words.copy(),
        "caption_unique_words": unique.copy(),
        "hangul_ratio": np.where(non_space > 0, hangul / denom, 0.0),
        "special_ratio": np.where(non_space > 0, special / denom, 0.0),
        "max_char_run": runs.copy(),
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


def warm() -> None:
    """Compile (or load from the cache) every kernel on one caption: the image build calls it, so the
    compiled kernels ship in the package's __pycache__."""
    caps = pa.array(["산 바다"], pa.large_string())
    caption_features(caps)
    word_types(caps, np.zeros(1, np.int64), 1)
