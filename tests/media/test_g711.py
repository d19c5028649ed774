"""G.711 law conversion tables (media/g711.py), checked against the stdlib's audioop."""

from __future__ import annotations

import importlib
import struct
import warnings
from typing import Any

import pytest

from media.g711 import ALAW_TO_ULAW, ULAW_TO_ALAW


@pytest.fixture(scope="module")
def audioop() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("audioop")
        except ImportError:
            pytest.skip("audioop is gone (Python 3.13+)")


def test_law_conversion_tables_match_the_reference(audioop: Any) -> None:
    every = bytes(range(256))
    assert every.translate(ULAW_TO_ALAW) == audioop.lin2alaw(audioop.ulaw2lin(every, 2), 2)
    assert every.translate(ALAW_TO_ULAW) == audioop.lin2ulaw(audioop.alaw2lin(every, 2), 2)


def test_law_round_trip_is_nearly_lossless(audioop: Any) -> None:
    every = bytes(range(256))
    back = every.translate(ULAW_TO_ALAW).translate(ALAW_TO_ULAW)
    pcm_in = audioop.ulaw2lin(every, 2)
    pcm_back = audioop.ulaw2lin(back, 2)
    worst = max(
        abs(a - b)
        for a, b in zip(struct.unpack("256h", pcm_in), struct.unpack("256h", pcm_back), strict=True)
    )
    assert worst <= 1024  # one A-law step at the top segment
