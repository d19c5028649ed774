"""compliance.dnc.lookup: keys, list names, staleness, and directory lookups against bisect."""

from __future__ import annotations

import io
import random
from datetime import timedelta
from pathlib import Path

import pytest

from compliance.dnc import DncList, DncStore, dnc_key
from compliance.errors import InvalidDncListName
from tests.compliance.dnc.dnckit import T0


def test_keys_are_exact_and_disjoint() -> None:
    assert dnc_key("+12125551234") == 2125551234.0
    assert dnc_key("+442079460000") == 442079460000.0 + 1e15
    assert dnc_key("+19999999999") < dnc_key("+2")  # NANP and the rest never meet
    assert dnc_key("junk") == -1.0
    assert dnc_key("+1212555123x") == -1.0
    # The largest E.164 number is still an exact double.
    big = "+" + "9" * 15
    assert int(dnc_key(big) - 1e15) == int("9" * 15)


def test_staleness_is_31_days() -> None:
    lst = DncList("federal", source="t", loaded_at=T0)
    assert not lst.is_stale(T0 + timedelta(days=31))
    assert lst.is_stale(T0 + timedelta(days=31, seconds=1))


@pytest.mark.parametrize("bad", ["", "../etc", ".hidden", "a/b", "x" * 65, "sp ace"])
def test_list_names_are_safe_file_names(bad: str) -> None:
    with pytest.raises(InvalidDncListName):
        DncList(bad, source="t", loaded_at=T0)


def test_directory_lookups_match_bisect(tmp_path: Path) -> None:
    rng = random.Random(9)

    def nanp() -> int:  # NPA and NXX start 2-9, as the importer requires
        return (
            rng.randrange(200, 1000) * 10**7
            + rng.randrange(200, 1000) * 10**4
            + rng.randrange(10**4)
        )

    nums = sorted({nanp() for _ in range(50_000)} | {2_002_000_000, 9_999_999_999, 2_002_000_001})
    store = DncStore()
    store.import_stream(
        "big", io.BytesIO(b"\n".join(b"%d" % v for v in nums)), source="t", loaded_at=T0
    )
    store.add_numbers("big", ["+442079460000"], source="t", loaded_at=T0)  # beyond the NANP
    lst = store["big"]
    assert lst._dir is not None
    members = set(nums)
    for v in [*nums[::7], nums[0], nums[-1]]:
        assert lst.contains(f"+1{v}")
    for _ in range(20_000):
        v = nanp()
        assert lst.contains(f"+1{v}") == (v in members)
    assert lst.contains("+442079460000") and not lst.contains("+442079460001")
    assert not lst.contains("junk") and not lst.contains("+11999999999")
    # Removal keeps lookups right without a rebuild; save compacts.
    gone = [f"+1{v}" for v in (nums[0], nums[1], nums[5000], nums[-1])]
    assert store.remove_numbers("big", gone) == 4
    assert store.remove_numbers("big", gone) == 0
    assert not any(lst.contains(e) for e in gone)
    assert lst.contains(f"+1{nums[2]}") and lst.contains(f"+1{nums[5001]}")
    assert len(lst) == len(nums) + 1 - 4
    store.save(tmp_path)
    again = DncStore.load(tmp_path)["big"]
    assert len(again) == len(lst) and list(again.numbers()) == list(lst.numbers())
    assert not again.contains(gone[2]) and again.contains(f"+1{nums[5001]}")
