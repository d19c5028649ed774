"""compliance.dnc.memory: release_memory collects garbage and, on glibc, trims the heap."""

from __future__ import annotations

import platform
import weakref

import pytest

from compliance.dnc import memory, release_memory


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only a collection frees it


def test_release_memory_collects_cycles() -> None:
    node = _Node()
    ref = weakref.ref(node)
    del node
    assert ref() is not None
    release_memory()
    assert ref() is None


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_is_found_on_glibc() -> None:
    assert memory._MALLOC_TRIM is not None
