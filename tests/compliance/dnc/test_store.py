"""compliance.dnc.store: merging and replacing imports, adding and removing single numbers."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest

from compliance.dnc import DncStore
from compliance.errors import DncListNotFound
from tests.compliance.dnc.dnckit import T0, imp


def test_merge_and_replace() -> None:
    store, _ = imp(b"2125551234\n")
    rep = store.import_stream(
        "federal", io.BytesIO(b"3055551234\n2125551234\n"), source="t", loaded_at=T0, merge=True
    )
    assert (rep.total, rep.duplicates) == (2, 1)
    rep = store.import_stream("federal", io.BytesIO(b"4155551234\n"), source="t", loaded_at=T0)
    assert rep.total == 1
    assert store.lookup("+12125551234") == []
    assert store.lookup("+14155551234") == ["federal"]


def test_add_and_remove_numbers() -> None:
    store = DncStore()
    rep = store.add_numbers(
        "internal", ["(212) 555-1234", "+442079460000", "junk"], source="api", loaded_at=T0
    )
    assert (rep.read, rep.imported, rep.rejected, rep.total) == (3, 2, 1, 2)
    lst = store["internal"]
    assert lst.contains("+442079460000")
    assert lst.max_age_days is None and not lst.is_stale(T0 + timedelta(days=3650))
    assert store.remove_numbers("internal", ["+12125551234", "+13055551234"]) == 1
    assert not lst.contains("+12125551234")
    with pytest.raises(DncListNotFound):
        store.remove_numbers("nope", [])
