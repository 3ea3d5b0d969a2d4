"""Filter rules: named, configured in YAML, evaluated column-wise over the whole manifest.

Each rule yields a boolean "fails" mask and a reason per failing row ("<rule>: <detail>"). A row is
clean when no rule fails it; rejected rows keep every reason. Rules read stored columns only (metadata,
caption features, probe scores), so thresholds can be re-tuned on a probed manifest without probing again.

Rule types:
  ingest       rows whose ingest recorded an error (always applied, even when not listed)
  probe_ok     the media file exists and decodes (skipped for rows never probed unless require_probe)
  range        `field` within [min, max]; `media_types` limits it; rows missing the field pass
               unless `missing: reject`
  duplicate    equal `field` values (sha256): the first row in manifest order is kept
  near_duplicate  perceptual hashes within `max_distance` bits: the first row of each cluster is kept

A range rule's field is any numeric column: width, height, duration, fps (probed values win over label
values), short_side, aspect_ratio (long/short side), the caption features (features.FEATURE_COLUMNS) and
the probe scores (blur, motion, black_ratio, frozen_ratio, scene_cuts, file_size, ...).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from vidtune.platform.errors import InvalidArgument
from vidtune.platform.storage import Storage

from .features import FEATURE_COLUMNS, caption_features

DEFAULT_RULES_YAML = """\
# vidtune quality filter rules. Every rule has a unique name; `enabled: false` switches one off.
rules:
  - {name: ingest_errors, type: ingest}
  - {name: media_readable, type: probe_ok}
  - {name: caption_length, type: range, field: caption_chars, min: 50, max: 1500}
  - {name: video_duration, type: range, field: duration, min: 5, max: 45, media_types: [video]}
  - {name: caption_char_run, type: range, field: max_char_run, max: 10}
  - {name: caption_repeated_ngrams, type: range, field: ngram_repeat_ratio, max: 0.5}
  - {name: special_characters, type: range, field: special_ratio, max: 0.1}
  - {name: hangul_ratio, type: range, field: hangul_ratio, min: 0.5}
  - {name: min_resolution, type: range, field: short_side, min: 240}
  - {name: aspect_ratio, type: range, field: aspect_ratio, max: 2.4}
  - {name: fps_range, type: range, field: fps, min: 10, max: 120, media_types: [video]}
  - {name: exact_duplicate, type: duplicate, field: sha256}
  - {name: near_duplicate, type: near_duplicate, field: phash, max_distance: 8}
  - {name: blur, type: range, field: blur, min: 15}
  - {name: still_clip, type: range, field: motion, min: 0.05, media_types: [video]}
  - {name: black_frames, type: range, field: black_ratio, max: 0.5, media_types: [video]}
  - {name: frozen_frames, type: range, field: frozen_ratio, max: 0.8, media_types: [video]}
  - {name: scene_cuts, type: range, field: scene_cuts, max: 30, media_types: [video]}
"""
RULE_TYPES = ("ingest", "probe_ok", "range", "duplicate", "near_duplicate")


@dataclass
class Rule:
    name: str
    type: str
    field: str = ""
    min: float | None = None
    max: float | None = None
    media_types: list[str] | None = None
    missing: str = "pass"          # range: what a row without the field gets (pass | reject)
    max_distance: int = 8          # near_duplicate
    require_probe: bool = False    # probe_ok
    enabled: bool = True

    def describe(self) -> str:
        if self.type == "range":
            lim = " and ".join(s for s in (f">= {self.min:g}" if self.min is not None else "",
                                           f"<= {self.max:g}" if self.max is not None else "") if s)
            scope = f" ({', '.join(self.media_types)})" if self.media_types else ""
            return f"{self.field} {lim}{scope}"
        if self.type == "near_duplicate":
            return f"{self.field} hamming distance > {self.max_distance} (same type, aspect and length)"
        if self.type == "duplicate":
            return f"unique {self.field}"
        return {"ingest": "row read cleanly", "probe_ok": "media exists and decodes"}[self.type]


@dataclass
class RuleSet:
    rules: list[Rule] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"rules": [{k: v for k, v in r.__dict__.items() if v is not None} for r in self.rules]}


def parse_rules(text: str, origin: str = "rules") -> RuleSet:
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise InvalidArgument(f"{origin}: not valid YAML: {e}") from None
    items = doc.get("rules") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise InvalidArgument(f"{origin}: expected `rules:` with a list of rules")
    rules, names = [], set()
    known = set(Rule.__dataclass_fields__)
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item or "type" not in item:
            raise InvalidArgument(f"{origin}: rule #{i + 1} needs a name and a type")
        if not isinstance(item["name"], str) or not item["name"]:
            raise InvalidArgument(f"{origin}: rule #{i + 1} name {item['name']!r} must be text "
                                  "(quote names such as 'off' or 'no' that YAML reads as booleans)")
        unknown = set(item) - known
        if unknown:
            raise InvalidArgument(f"{origin}: rule {item['name']!r} has unknown keys {sorted(unknown)}")
        for key in ("min", "max", "max_distance"):
            item[key] = _number(item, key, origin) if key in item else getattr(Rule, key)
        rule = Rule(**item)
        if rule.type not in RULE_TYPES:
            raise InvalidArgument(f"{origin}: rule {rule.name!r} has unknown type {rule.type!r}; "
                                  f"known: {RULE_TYPES}")
        if rule.name in names:
            raise InvalidArgument(f"{origin}: rule name {rule.name!r} is used twice")
        if rule.type in ("range", "duplicate", "near_duplicate") and not rule.field:
            raise InvalidArgument(f"{origin}: rule {rule.name!r} needs a field")
        if rule.type == "range" and rule.min is None and rule.max is None:
            raise InvalidArgument(f"{origin}: range rule {rule.name!r} needs min and/or max")
        names.add(rule.name)
        rules.append(rule)
    for rule in rules:  # after the shape of every rule is known good
        check_field(rule, origin)
    if not any(r.type == "ingest" for r in rules):  # a row that could not be read never passes
        rules.insert(0, Rule(name="ingest_errors", type="ingest"))
    return RuleSet(rules)


def _number(item: dict, key: str, origin: str):
    """A rule's numeric setting as a number: YAML 1.1 reads `1e308` (no dot) as text, which would fail the whole
    pass later; anything that is not a number is refused naming the rule."""
    v = item[key]
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            v = None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise InvalidArgument(f"{origin}: rule {item['name']!r}: {key} must be a number, not {item[key]!r}")
    if key == "max_distance":
        if v != int(v) or v < 0:
            raise InvalidArgument(f"{origin}: rule {item['name']!r}: max_distance must be a whole number of bits "
                                  f">= 0, not {item[key]!r}")
        return int(v)
    return v


def known_fields() -> dict[str, tuple[str, ...]]:
    """The columns each rule type may name: a typo is an error when the rules are read, not a rule that
    silently never applies."""
    from .manifest import CORE_SCHEMA
    from .probe import PROBE_SCHEMA

    numeric = [f.name for f in (*CORE_SCHEMA, *PROBE_SCHEMA)
               if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
    derived = ["short_side", "aspect_ratio", "fps", *FEATURE_COLUMNS]
    return {"range": tuple(dict.fromkeys(numeric + derived)),
            "duplicate": tuple(f.name for f in (*CORE_SCHEMA, *PROBE_SCHEMA)),
            "near_duplicate": ("phash",)}


def check_field(rule: Rule, origin: str) -> None:
    allowed = known_fields().get(rule.type)
    if allowed is not None and rule.field not in allowed:
        raise InvalidArgument(f"{origin}: rule {rule.name!r} names unknown field {rule.field!r} for a "
                              f"{rule.type} rule; known: {', '.join(allowed)}")


def default_rules() -> RuleSet:
    return parse_rules(DEFAULT_RULES_YAML, "default rules")


def load_rules(uri: str | None, storage: Storage | None = None,
               overrides: dict[str, dict] | None = None) -> RuleSet:
    """Rules from a YAML file/URI (or the defaults), with optional per-rule overrides {name: {key: value}}."""
    rs = parse_rules((storage or Storage()).read_text(uri), uri) if uri else default_rules()
    for name, changes in (overrides or {}).items():
        match = [r for r in rs.rules if r.name == name]
        if not match:
            raise InvalidArgument(f"override for unknown rule {name!r}")
        for k, v in changes.items():
            if k not in Rule.__dataclass_fields__:
                raise InvalidArgument(f"override for rule {name!r}: unknown key {k!r}")
            setattr(match[0], k, v)
        check_field(match[0], f"override for rule {name!r}")
    return rs


def _np(table: pa.Table, name: str, dtype=float) -> np.ndarray:
    col = table.column(name)
    if dtype is float:
        # safe=False: an integer past 2**53 (a tampered manifest) becomes the nearest double instead of an error
        return pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(float)  # nulls -> nan
    return np.asarray(col.to_pylist(), dtype=object)


def effective_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """Numeric columns rules can name: probe values win over label values; caption features added."""
    n = table.num_rows
    cols: dict[str, np.ndarray] = {}
    for name in ("width", "height", "duration", "fps"):
        label = _np(table, name) if name in table.column_names else np.full(n, np.nan)
        probe = _np(table, f"probe_{name}") if f"probe_{name}" in table.column_names else np.full(n, np.nan)
        cols[name] = np.where(np.isnan(probe), label, probe)
    w, h = cols["width"], cols["height"]
    with np.errstate(invalid="ignore", divide="ignore"):
        cols["short_side"] = np.where(np.isnan(w) | np.isnan(h), np.nan, np.minimum(w, h))
        cols["aspect_ratio"] = np.where(cols["short_side"] > 0, np.maximum(w, h) / cols["short_side"], np.nan)
    if all(c in table.column_names for c in FEATURE_COLUMNS):
        for c in FEATURE_COLUMNS:
            cols[c] = _np(table, c)
    else:
        cols.update({k: v.astype(float) for k, v in caption_features(table).items()})
    return cols


@dataclass
class FilterResult:
    """The split of `table`. `clean` and `rejected` are taken from it on first use, so a caller that needs
    only one of them (the statistics read clean rows only) never copies the other's captions."""
    table: pa.Table
    rejected_mask: np.ndarray
    reasons: pa.Array  # of each rejected row, in row order
    report: dict

    @functools.cached_property
    def clean(self) -> pa.Table:
        return self.table.filter(pa.array(~self.rejected_mask))

    @functools.cached_property
    def rejected(self) -> pa.Table:
        return self.table.filter(pa.array(self.rejected_mask)).append_column("reasons", self.reasons)


def _fmt(v: float) -> str:
    if v != v:
        return "missing"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.3g}"


def apply_rules(table: pa.Table, rules: RuleSet) -> FilterResult:
    """Split `table` into clean and rejected rows; every rejected row lists every rule it failed."""
    n = table.num_rows
    cols = effective_columns(table)
    media_type = pc.fill_null(table.column("media_type"), "").to_numpy(zero_copy_only=False).astype(str) \
        if "media_type" in table.column_names else np.full(n, "", dtype=object)
    found: list[tuple[str, np.ndarray, pa.Array]] = []  # per rule: its name, failing rows, their reasons
    counts: dict[str, int] = {}
    skipped: dict[str, str] = {}
    ids = _LazyList(table.column("id"))  # only the rules that name another row read ids

    def record(rule: Rule, idx: np.ndarray, reasons: pa.Array) -> None:
        counts[rule.name] = int(idx.size)
        found.append((rule.name, idx, reasons))

    def add(rule: Rule, mask: np.ndarray, detail) -> None:
        idx = np.flatnonzero(mask)
        record(rule, idx, pa.array([f"{rule.name}: {detail(i)}" for i in idx.tolist()], pa.string()))

    def add_worded(rule: Rule, mask: np.ndarray, worded: list[str], which: np.ndarray) -> None:
        """add() for reasons that are few distinct texts: failing row k has worded[which[k]] (no per-row call)."""
        texts = pa.array([f"{rule.name}: {w}" for w in worded], pa.string())
        record(rule, np.flatnonzero(mask), texts.take(pa.array(which.ravel().astype(np.int64))))

    for rule in rules.rules:
        if not rule.enabled:
            skipped[rule.name] = "disabled"
            continue
        if rule.type == "ingest":
            errs = table.column("ingest_error")
            add(rule, pc.is_valid(errs).to_numpy(zero_copy_only=False), lambda i: errs[i].as_py())
        elif rule.type == "probe_ok":
            if "decodable" not in table.column_names:
                if rule.require_probe:
                    add(rule, np.ones(n, bool), lambda i: "not probed")
                else:
                    skipped[rule.name] = "manifest not probed"
                continue
            probed = pc.is_valid(table.column("decodable")).to_numpy(zero_copy_only=False)
            dec = pc.fill_null(table.column("decodable"), True).to_numpy(zero_copy_only=False)
            err = table.column("probe_error").to_pylist()
            mask = ~dec | (~probed if rule.require_probe else np.zeros(n, bool))
            add(rule, mask, lambda i: err[i] or "not probed")
        elif rule.type == "range":
            if rule.field in cols:
                values = cols[rule.field]
            elif rule.field in table.column_names:
                values = _np(table, rule.field)
            else:
                if rule.missing == "reject":
                    add(rule, np.ones(n, bool), lambda i: f"{rule.field} missing")
                else:
                    skipped[rule.name] = f"no column {rule.field!r}"
                continue
            scope = np.isin(media_type, rule.media_types) if rule.media_types else np.ones(n, bool)
            missing = np.isnan(values)
            low = values < rule.min if rule.min is not None else np.zeros(n, bool)
            high = values > rule.max if rule.max is not None else np.zeros(n, bool)
            mask = scope & ((low | high) | (missing & (rule.missing == "reject")))

            def say(x, r=rule):
                if x != x:
                    return f"{r.field} missing"
                if r.min is not None and x < r.min:
                    return f"{r.field} {_fmt(x)} < min {r.min:g}"
                return f"{r.field} {_fmt(x)} > max {r.max:g}"

            # Failing rows share few distinct values (lengths, durations): each is worded once.
            distinct, which = np.unique(values[mask], return_inverse=True)
            add_worded(rule, mask, [say(x) for x in distinct.tolist()], which)
        elif rule.type == "duplicate":
            if rule.field not in table.column_names:
                skipped[rule.name] = f"no column {rule.field!r}"
                continue
            vals = table.column(rule.field).to_pylist()
            first: dict = {}
            dup = np.zeros(n, bool)
            of: dict[int, str] = {}
            for i, v in enumerate(vals):
                if v is None or v == "":
                    continue
                if v in first:
                    dup[i] = True
                    of[i] = ids[first[v]]
                else:
                    first[v] = i
            add(rule, dup, lambda i: f"same {rule.field} as {of[i]}")
        elif rule.type == "near_duplicate":
            if rule.field not in table.column_names:
                skipped[rule.name] = f"no column {rule.field!r}"
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                aspect = np.where(cols["height"] > 0, cols["width"] / cols["height"], np.nan)  # keeps orientation
            dur = cols["duration"]

            def compatible(i: int, j: int) -> bool:
                # A re-encode keeps media type, shape and length; the hash alone confuses e.g. two
                # shots of one static set.
                if media_type[i] != media_type[j]:
                    return False
                if not (np.isnan(aspect[i]) or np.isnan(aspect[j])) and abs(aspect[i] - aspect[j]) > 0.1 * aspect[j]:
                    return False
                if not (np.isnan(dur[i]) or np.isnan(dur[j])) and abs(dur[i] - dur[j]) > max(0.5, 0.05 * dur[j]):
                    return False
                return True

            kinds = np.unique(media_type, return_inverse=True)[1].ravel()
            same = np.column_stack([kinds.astype(np.uint64), np.asarray(aspect, np.float64).view(np.uint64),
                                    np.asarray(dur, np.float64).view(np.uint64)])
            hashes = table.column(rule.field)
            bad = ~hex_hashes(hashes) & (pc.fill_null(pc.utf8_length(hashes), 0).to_numpy(zero_copy_only=False) > 0)
            dup_of = near_duplicates(hashes, rule.max_distance, compatible, same)
            mask = np.array([d is not None for d in dup_of], dtype=bool) | bad  # a bad hash is in no pair
            add(rule, mask, lambda i: f"{rule.field} {_clipped(hashes[i].as_py())} is not a hash of hexadecimal "
                f"digits (at most {MAX_HASH_DIGITS})" if bad[i] else _near_duplicate_reason(dup_of[i], ids))
    hits = np.zeros(n, np.int64)
    for _, idx, _ in found:
        hits[idx] += 1
    rejected_mask = hits > 0
    # Every reason of every rejected row, by row and, within a row, in rule order (a stable sort).
    rows = np.concatenate([idx for _, idx, _ in found] + [np.zeros(0, np.int64)])
    texts = pa.concat_arrays([ts for _, _, ts in found] + [pa.array([], pa.string())])
    offsets = np.concatenate(([0], np.cumsum(hits[rejected_mask]))).astype(np.int32)
    reasons = pa.ListArray.from_arrays(pa.array(offsets), texts.take(pa.array(_stable_order(rows, max(1, n.bit_length())))))
    only = {name: int(np.sum(hits[idx] == 1)) for name, idx, _ in found}
    n_rejected = int(rejected_mask.sum())
    report = {
        "rows_in": n, "clean": n - n_rejected, "rejected": n_rejected,
        "rules": [{"name": r.name, "type": r.type, "check": r.describe(), "enabled": r.enabled,
                   "rejected": counts.get(r.name, 0), "only_reason": only.get(r.name, 0),
                   "skipped": skipped.get(r.name)} for r in rules.rules],
    }
    return FilterResult(table, rejected_mask, reasons, report)


def near_duplicates(hashes: list[str | None], max_distance: int,
                    compatible: Callable[[int, int], bool] | None = None,
                    same: np.ndarray | None = None) -> list[tuple[int, int, int] | None]:
    """For each row that is not the first of its cluster: (the cluster's first row, the row's closest
    match, their distance); None for the others. A row can join a cluster through a later row, so its
    closest match need not be the first row.

    Hex hashes of equal length are compared by Hamming distance (an image's one-frame hash is never compared
    with a video's three-frame one); any other hash is left out (see hex_hashes; the rule rejects its row).
    The close pairs come from an exact search whose plan (pigeonhole bands, radius-1 multi-index bands, or
    all pairs) is chosen per hash length from the bucket sizes, so a raised threshold costs what its
    candidates cost (see _close_pairs); only the close pairs (few) reach Python.
    `compatible(i, j)` (i < j) can veto a pair. `same` (rows x k uint64, optional) holds what `compatible`
    looks at: rows with one hash and one `same` row are interchangeable to it.

    Rows with one hash (and one `same` row) are searched once, as the group's first row, and every other row
    of the group is paired with that first row at distance 0: the same clusters and closest matches as all
    their pairs, without the pairs (8,000 copies of one clip are 32 million of them). Where the veto of two
    groups depends on which row comes first (its tolerances scale with the later row), the hashes of that
    length are searched row by row instead.
    """
    n = len(hashes)
    col = pa.array(hashes, pa.string()) if not isinstance(hashes, (pa.Array, pa.ChunkedArray)) else hashes
    lengths = np.where(hex_hashes(col), pc.fill_null(pc.utf8_length(col), 0).to_numpy(zero_copy_only=False), 0)
    if compatible is not None and same is None:
        same = np.arange(n, dtype=np.uint64)[:, None]  # what the veto looks at is unknown: no row stands for another
    pairs, copies = [], []  # (row, row, distance) between groups' first rows; (first row, copy) in a group
    for length in np.unique(lengths[lengths > 0]):
        rows = np.flatnonzero(lengths == length)
        words = _hex_words(col.take(pa.array(rows)), int(length))
        key = words if same is None else np.column_stack([words, same[rows]])
        # The first row of each group of equal keys, and each row's group (a stable sort: firsts are earliest).
        _, first, group = np.unique(key, axis=0, return_index=True, return_inverse=True)
        head = first[group.ravel()]  # each row's group's first row (positions in `rows`)
        copy = np.flatnonzero(head != np.arange(len(rows)))
        if compatible is not None:  # a group whose rows the veto keeps apart (e.g. a negative aspect) is not one
            apart = {head[k] for k in copy.tolist() if not compatible(int(rows[head[k]]), int(rows[k]))}
            if apart:
                split = np.isin(head, list(apart))
                head[split] = np.flatnonzero(split)
                copy = np.flatnonzero(head != np.arange(len(rows)))
        bits, reach = int(length) * 4, min(max_distance, int(length) * 4)
        heads = np.flatnonzero(head == np.arange(len(rows)))
        a, b, d = _close_pairs(np.ascontiguousarray(words[heads]), bits, reach)
        if compatible is not None and copy.size:
            grouped = np.isin(heads, head[copy])
            near = [(int(rows[heads[i]]), int(rows[heads[j]])) for i, j in zip(a.tolist(), b.tolist())
                    if grouped[i] or grouped[j]]
            if any(compatible(i, j) != compatible(j, i) for i, j in near):
                head = heads = np.arange(len(rows))
                copy = np.zeros(0, np.int64)
                a, b, d = _close_pairs(words, bits, reach)
        pairs += zip(rows[heads[a]].tolist(), rows[heads[b]].tolist(), d.tolist())
        copies += zip(rows[head[copy]].tolist(), rows[copy].tolist())
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(ia: int, ib: int) -> None:
        ra, rb = find(ia), find(ib)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the earliest row leads the cluster

    closest: dict[int, tuple[int, int]] = {}  # row -> (distance, row) of its closest compatible match
    equal: dict[int, int] = {}  # group's first row -> the earliest other group's first row at distance 0
    for ia, ib, d in pairs:
        if compatible is not None and not compatible(ia, ib):
            continue
        join(ia, ib)
        for row, other in ((ia, ib), (ib, ia)):
            closest[row] = min((d, other), closest.get(row, (d, other)))
            if d == 0:
                equal[row] = min(other, equal.get(row, other))
    for head, row in copies:  # compatible with whatever its group's first row is compatible with
        join(head, row)
        closest[row] = (0, min(head, equal.get(head, head)))  # the earliest equal row, as all pairs would give
        closest[head] = min((0, row), closest.get(head, (0, row)))
    out: list[tuple[int, int, int] | None] = [None] * n
    for i in closest:
        root = find(i)
        if root != i:
            out[i] = (root, closest[i][1], closest[i][0])
    return out


MAX_HASH_DIGITS = 1024  # the probe writes 16 or 48; distances of up to 4,096 bits fit the search's counters


def hex_hashes(col) -> np.ndarray:
    """Which hashes are 1 to MAX_HASH_DIGITS hexadecimal digits (what the probe writes); nulls and others False."""
    digits = pc.and_(pc.match_substring_regex(col, "^[0-9a-fA-F]+$"),
                     pc.less_equal(pc.utf8_length(col), MAX_HASH_DIGITS))
    return pc.fill_null(digits, False).to_numpy(zero_copy_only=False)


def _clipped(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate("0123456789abcdef"):
    _HEX[ord(_c)] = _HEX[ord(_c.upper())] = _i


def _hex_words(col: pa.Array, length: int) -> np.ndarray:
    """Hex strings of one length (hex_hashes has checked them) as 64-bit words, least significant word first
    (shape rows x words)."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    col = col.cast(pa.large_string())
    offs = np.frombuffer(col.buffers()[1], np.int64)[col.offset:col.offset + len(col) + 1]
    data = np.frombuffer(col.buffers()[2], np.uint8)[offs[0]:offs[-1]]
    nibbles = _HEX[data].reshape(len(col), length)
    n_words = -(-length // 16)
    padded = np.zeros((len(col), n_words * 16), np.uint8)
    padded[:, n_words * 16 - length:] = nibbles
    octets = (padded[:, 0::2] << 4) | padded[:, 1::2]  # two hex digits per byte, most significant first
    words = octets.view(">u8").astype(np.uint64)
    return np.ascontiguousarray(words[:, ::-1])


def _bits(words: np.ndarray, lo: int, width: int) -> np.ndarray:
    """Bits [lo, lo + width) of every hash as an integer key: the bits themselves up to 64 bits wide (so a
    flipped key bit is a flipped hash bit), a 64-bit fold of them beyond."""
    key = np.zeros(len(words), np.uint64)
    shift = 0
    with np.errstate(over="ignore"):
        while width > 0:
            take = min(width, 64 - lo % 64)
            piece = (words[:, lo // 64] >> np.uint64(lo % 64)) & np.uint64((1 << take) - 1)
            if shift + take <= 64:
                key |= piece << np.uint64(shift)
                shift += take
            else:  # wider than 64 bits: equal bands still give equal keys (candidates are verified)
                key = key * np.uint64(0x100000001B3) + piece
            lo, width = lo + take, width - take
    return key


def _stable_order(key: np.ndarray, width: int) -> np.ndarray:
    """np.argsort(key, kind="stable") of non-negative keys below 2**width. NumPy radix-sorts 16-bit keys, so
    a wider key is ordered 16 bits at a time from the lowest (each pass stable): 5-7x faster on 200,000
    keys than its comparison sort of 64-bit values."""
    if width > 64:
        return np.argsort(key, kind="stable")
    key = key.astype(np.uint64, copy=False)
    order = np.argsort((key & np.uint64(0xFFFF)).astype(np.uint16), kind="stable")
    for shift in range(16, width, 16):
        digit = ((key[order] >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
    return order


# One candidate pair compared at gathered rows costs about as much as 12 pairs inside an all-pairs block
# (contiguous XOR + popcount): measured on the bench's 30,000 64-bit image hashes (4.6 ns vs ~60 ns a pair).
_GATHER_COST = 12
_DIRECT_BITS = 22  # bands up to this wide get a direct-address table (2**22 counts) for radius-1 probes
_PAIR_CHUNK = 1 << 22


def _edges(bits: int, bands: int) -> list[tuple[int, int]]:
    bands = max(1, min(bands, bits))
    e = [round(k * bits / bands) for k in range(bands + 1)]  # every band at least one bit wide
    return list(zip(e, e[1:]))


def _close_pairs(words: np.ndarray, bits: int, max_distance: int,
                 plan: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, distance) for every pair a < b of rows whose hashes differ in at most max_distance bits.

    Exact in every plan; the cheapest is chosen from the actual bucket sizes (`plan` forces one, for tests):
      all   every pair compared in contiguous blocks of XOR + popcount (thresholds so wide that buckets
            would hold most pairs anyway);
      r0    max_distance + 1 bands: two close hashes are equal on at least one band (pigeonhole), so only
            rows sharing a band value, adjacent once the band is sorted, are compared;
      r1    ceil((max_distance + 1) / 2) wider bands: two close hashes differ in at most one bit on at
            least one band, so each row meets only the rows whose band value equals its own or is one bit
            flip away, looked up in a direct-address table of the band's values (multi-index hashing).
    """
    m = len(words)
    d = min(max_distance, bits)  # no two hashes differ in more bits than they have
    empty = (np.zeros(0, np.int64),) * 3
    if m < 2:
        return empty
    # Each plan's cost in pairs compared at gathered rows, counted from the actual bucket sizes.
    costs = {"all": m * (m - 1) // 2 / _GATHER_COST}
    narrow, wide = _edges(bits, d + 1), _edges(bits, -(-(d + 1) // 2))
    columns = np.ascontiguousarray(words.T)  # one contiguous array per 64-bit word
    sorted_bands: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if d < bits:
        cost = 0
        for lo, hi in narrow:
            key = _bits(words, lo, hi - lo)
            if hi - lo <= 16:
                counts = np.bincount(key.astype(np.int64), minlength=1 << (hi - lo))
            else:  # a sort the search reuses
                order = _stable_order(key, hi - lo)
                sorted_bands[lo] = key[order], order
                edge = np.flatnonzero(np.diff(sorted_bands[lo][0])) + 1
                counts = np.diff(np.concatenate(([0], edge, [m])))
            cost += int((counts.astype(np.int64) * (counts - 1) // 2).sum())
        costs["r0"] = cost
    r1 = None
    if 1 <= d < bits and 2 * len(wide) >= d + 1 and max(hi - lo for lo, hi in wide) <= _DIRECT_BITS \
            and plan in (None, "r1"):
        r1 = [_radius1_ranges(_bits(words, lo, hi - lo).astype(np.int64), hi - lo) for lo, hi in wide]
        costs["r1"] = sum(int(count.sum()) + left.size / 4 for left, _, count, _ in r1)  # + table look-ups
    kind = plan or min(costs, key=costs.get)
    if kind not in costs:
        raise ValueError(f"plan {kind!r} does not apply to {bits}-bit hashes within {d} bits")
    found = [empty]
    if kind == "all":
        found.append(_all_pairs(columns, d))
    elif kind == "r0":
        for lo, hi in narrow:
            if lo not in sorted_bands:
                key = _bits(words, lo, hi - lo)
                order = _stable_order(key, hi - lo)
                sorted_bands[lo] = key[order], order
            found += _bucket_pairs(columns, d, *sorted_bands.pop(lo))
    else:
        for ranges in r1:
            found += _range_pairs(columns, d, *ranges)
    a, b, dist = (np.concatenate(x) for x in zip(*found))
    _, first = np.unique(a * m + b, return_index=True)  # a pair found in several bands counts once
    return a[first], b[first], dist[first]


def _distances(columns: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of rows a and b, one 64-bit column at a time (a per-row sum over a short axis is
    NumPy's slow path)."""
    dist = np.bitwise_count(columns[0][a] ^ columns[0][b]).astype(np.int64)
    for col in columns[1:]:
        dist += np.bitwise_count(col[a] ^ col[b])
    return dist


def _bucket_pairs(columns: np.ndarray, d: int, keys: np.ndarray, order: np.ndarray) -> list:
    """Close pairs among rows of equal sorted keys: each row against the rows k places on, for growing k
    (a bucket's pairs are all reached by k = its size - 1; rows whose bucket has ended drop out)."""
    m = keys.size
    out = []
    i = np.flatnonzero(keys[1:] == keys[:-1])  # rows with at least one later partner
    k = 1
    while i.size:
        a, b = order[i], order[i + k]
        dist = _distances(columns, a, b)
        close = dist <= d
        out.append((np.minimum(a, b)[close], np.maximum(a, b)[close], dist[close]))
        k += 1
        i = i[i + k < m]
        i = i[keys[i] == keys[i + k]]
    return out


def _radius1_ranges(key: np.ndarray, width: int):
    """For each row, the rows whose band value is one bit flip above its own, as ranges of the band's sort
    order (row left[k] meets order[first[k] : first[k] + count[k]]), plus each row's later rows of an equal
    value. A pair one flip apart is met once: from the row whose value has the flipped bit clear. Rows are
    taken in sorted order, so each flip's look-ups walk the table forwards (cache-friendly)."""
    m = key.size
    order = _stable_order(key, width)
    skey = key[order].astype(np.int32)
    count_of = np.bincount(skey, minlength=1 << width).astype(np.int32)
    start_of = np.cumsum(count_of, dtype=np.int64) - count_of
    up = skey[None, :] | (np.int32(1) << np.arange(width, dtype=np.int32))[:, None]  # flip j of every row
    count = np.take(count_of, up)
    count[up == skey[None, :]] = 0  # the bit was set already: that pair is met from the other row
    hit = np.flatnonzero(count)
    pos = np.arange(m)
    later = start_of[skey] + count_of[skey] - pos - 1  # equal values: stable order puts later rows after
    left = order[np.concatenate([hit % m, pos])]
    first = np.concatenate([start_of[up.ravel()[hit]], pos + 1])
    return left, first, np.concatenate([count.ravel()[hit], later]), order


def _range_pairs(columns: np.ndarray, d: int, left: np.ndarray, first: np.ndarray, count: np.ndarray,
                 order: np.ndarray) -> list:
    """Close pairs of row left[k] with the rows order[first[k] : first[k] + count[k]], in bounded chunks."""
    out = []
    keep = np.flatnonzero(count > 0)
    left, first, count = left[keep], first[keep], count[keep]
    ends = np.cumsum(count)
    cut = 0
    while cut < left.size:
        stop = max(cut + 1, int(np.searchsorted(ends, (ends[cut - 1] if cut else 0) + _PAIR_CHUNK, "right")))
        c = count[cut:stop]
        offs = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
        a = np.repeat(left[cut:stop], c)
        b = order[np.repeat(first[cut:stop], c) + offs]
        dist = _distances(columns, a, b)
        close = dist <= d
        out.append((np.minimum(a, b)[close], np.maximum(a, b)[close], dist[close]))
        cut = stop
    return out


def _all_pairs(columns: np.ndarray, d: int, block_elements: int = 1 << 22):
    """Every pair compared, block by block of contiguous XOR + popcount."""
    n_words, m = columns.shape
    found_a, found_b, found_d = [], [], []
    block = max(1, block_elements // m)
    for start in range(0, m - 1, block):
        stop = min(m, start + block)
        # rows [start, stop) against every later row: the columns after the block are all later
        dist = np.bitwise_count(columns[0][start:stop, None] ^ columns[0][None, start:]).astype(
            np.uint8 if n_words <= 3 else np.uint16)  # d <= bits < 255 in uint8
        for col in columns[1:]:
            dist += np.bitwise_count(col[start:stop, None] ^ col[None, start:])
        width = m - start
        diag = dist[:, :stop - start]
        diag[np.tril_indices(stop - start)] = 255 if dist.dtype == np.uint8 else 65535  # a < b only
        flat = np.flatnonzero(dist.ravel() <= d)
        r, c = np.divmod(flat, width)
        found_a.append(r + start)
        found_b.append(c + start)
        found_d.append(dist.ravel()[flat].astype(np.int64))
    return np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_d)


class _LazyList:
    """A column's values as a Python list, converted on the first read."""

    def __init__(self, column):
        self._column, self._values = column, None

    def __getitem__(self, i: int):
        if self._values is None:
            self._values = self._column.to_pylist()
        return self._values[i]


def _near_duplicate_reason(match: tuple[int, int, int], ids: list) -> str:
    kept, closest, distance = match
    reason = f"within {distance} bits of {ids[closest]}"
    return reason if closest == kept else f"{reason} (its cluster keeps {ids[kept]})"
