"""A manifest edited outside vidtune can hold bytes that are not UTF-8 in any text column (Parquet does not check
them): the row is rejected by the ingest_errors rule with the columns named, and every other row passes."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from vidtune.platform.storage import Storage
from vidtune.quality.features import with_features
from vidtune.quality.manifest import read_table
from vidtune.quality.rules import apply_rules, default_rules
from vidtune.quality.stats import compute_stats

from test_rules import manifest


def _with_bytes(table: pa.Table, name: str, row: int, raw: bytes) -> pa.Table:
    values = [v.encode() if v is not None else None for v in table.column(name).to_pylist()]
    values[row] = raw
    kind = table.schema.field(name).type
    b = pa.array(values, pa.large_binary() if pa.types.is_large_string(kind) else pa.binary())
    col = pa.Array.from_buffers(kind, len(b), b.buffers())
    return table.set_column(table.schema.get_field_index(name), name, col)


def test_invalid_utf8_rejects_its_row_alone(tmp_path):
    table = manifest({"phash": "f0f0f0f0f0f0f0f0"}, {"phash": "0f0f0f0f0f0f0f0f"}, {"phash": "00ff00ff00ff00ff"})
    table = _with_bytes(table, "id", 1, b"r1\xff")
    table = _with_bytes(table, "caption", 1, table.column("caption")[1].as_py().encode() + b"\xfe")
    table = _with_bytes(table, "phash", 2, b"00ff00ff00ff00\xc3(")
    path = tmp_path / "edited.parquet"
    pq.write_table(table, path)
    got = read_table(str(path), Storage())
    res = apply_rules(with_features(got), default_rules())
    assert res.clean.column("id").to_pylist() == ["r0"]
    reasons = res.rejected.column("reasons").to_pylist()
    assert reasons[0] == ["ingest_errors: not valid UTF-8 in id, caption (bytes replaced)"]
    assert reasons[1][0] == "ingest_errors: not valid UTF-8 in phash (bytes replaced)"
    assert res.rejected.column("id").to_pylist()[0] == "r1\ufffd"
    compute_stats(res.clean, content_sample=0)


def test_a_valid_manifest_is_read_as_written(tmp_path):
    table = manifest({"caption": "설악산 능선 위로 구름이 흘러가는 모습을 오래 담은 기록 영상이다. " * 3}, {})
    pq.write_table(table, tmp_path / "ok.parquet")
    assert read_table(str(tmp_path / "ok.parquet"), Storage()).equals(pa.Table.from_batches(table.to_batches()))
