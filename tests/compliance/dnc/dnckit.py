"""Shared by the DNC tests: a fixed load time and a one-call import into a fresh store."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from compliance.dnc import DncStore, ImportReport

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def imp(data: bytes, name: str = "federal") -> tuple[DncStore, ImportReport]:
    store = DncStore()
    rep = store.import_stream(name, io.BytesIO(data), source="test", loaded_at=T0)
    return store, rep
