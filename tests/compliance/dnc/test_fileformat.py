"""compliance.dnc.fileformat: lists saved and loaded back, corruption refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from compliance.dnc import DncStore
from compliance.errors import DncStoreCorrupt
from tests.compliance.dnc.dnckit import T0, imp


def test_persistence_roundtrip(tmp_path: Path) -> None:
    store, _ = imp(b"2125551234\n3055551234\n")
    store.add_numbers("internal", ["+442079460000"], source="api", loaded_at=T0)
    store.save(tmp_path)
    loaded = DncStore.load(tmp_path)
    assert sorted(lst.name for lst in loaded) == ["federal", "internal"]
    fed = loaded["federal"]
    assert (fed.source, fed.loaded_at, fed.max_age_days, len(fed)) == ("test", T0, 31, 2)
    assert fed.contains("+13055551234")
    assert loaded["internal"].max_age_days is None
    assert loaded["internal"].contains("+442079460000")
    store.delete_saved(tmp_path, "internal")
    assert [lst.name for lst in DncStore.load(tmp_path)] == ["federal"]


def test_load_rejects_corruption(tmp_path: Path) -> None:
    store, _ = imp(b"2125551234\n3055551234\n")
    store.save(tmp_path)
    data = tmp_path / "federal.f64"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    with pytest.raises(DncStoreCorrupt, match="CRC"):
        DncStore.load(tmp_path)
    data.write_bytes(bytes(raw[:-1]))
    with pytest.raises(DncStoreCorrupt, match="bytes"):
        DncStore.load(tmp_path)
    (tmp_path / "federal.json").write_text("{not json")
    with pytest.raises(DncStoreCorrupt):
        DncStore.load(tmp_path)


def test_load_missing_directory_is_empty(tmp_path: Path) -> None:
    assert len(DncStore.load(tmp_path / "nope")) == 0
