"""exchange/models.py: decimals (money, percentages) only as exact text, from a file or the API."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from exchange.models import BidProfile, check_decimals, config_from_file, typed_leaves

ROOT = Path(__file__).resolve().parents[2]


def _file(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


BUYER = """
[[buyers]]
id = "b1"
name = "Buyer"
[[buyers.profiles]]
id = "p1"
bid = {bid}
"""


def test_the_example_config_loads() -> None:
    cfg = config_from_file(_file((ROOT / "config" / "example.toml").read_text()))
    assert cfg.buyers[0].profiles[0].bid == Decimal("12.00")


@pytest.mark.parametrize(
    ("bid", "expected"),
    [
        ('"12.50"', Decimal("12.50")),
        ("12", Decimal(12)),
        ('"999999.999999"', Decimal("999999.999999")),
    ],
)
def test_a_file_takes_money_as_a_string_or_an_integer(bid: str, expected: Decimal) -> None:
    cfg = config_from_file(_file(BUYER.format(bid=bid)))
    assert cfg.buyers[0].profiles[0].bid == expected


@pytest.mark.parametrize(
    ("bid", "words"),
    [
        ("12.5", 'Expected a decimal string such as "12.5" (in quotes), not the number 12.5'),
        ("0.1", "not the number 0.1"),
        ('"1e3"', "got '1e3'"),
        ('"-1"', "got '-1'"),
        ('" 5"', "got ' 5'"),
        ('"1.0000001"', "got '1.0000001'"),
        ("1000000", "got '1000000'"),  # above 999999.999999: no CDR could hold it
        ("-3", "got '-3'"),
    ],
)
def test_a_file_refuses_floats_and_inexact_money_naming_the_field(bid: str, words: str) -> None:
    with pytest.raises(msgspec.ValidationError) as exc:
        config_from_file(_file(BUYER.format(bid=bid)))
    assert words in str(exc.value)
    assert str(exc.value).endswith("- at `$.buyers[0].profiles[0].bid`")


def test_a_file_refuses_a_float_percentage_and_money_nested_in_caps() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.trunks\[0\]\.payout_share`"):
        config_from_file(_file('[[trunks]]\nid = "t"\nname = "T"\npayout_share = 70.5\n'))
    with pytest.raises(msgspec.ValidationError, match=r"got '101' - at `\$\.trunks\[0\]"):
        config_from_file(_file('[[trunks]]\nid = "t"\nname = "T"\npayout_share = 101\n'))
    trunk = config_from_file(_file('[[trunks]]\nid = "t"\nname = "T"\npayout_share = 70\n'))
    assert trunk.trunks[0].payout_share == Decimal(70)
    caps = BUYER.format(bid='"1"') + "[buyers.profiles.caps]\nbudget_daily = 100.0\n"
    with pytest.raises(msgspec.ValidationError, match=r"profiles\[0\]\.caps\.budget_daily`$"):
        config_from_file(_file(caps))


@pytest.mark.parametrize("value", [5, 5.5, 0])
def test_the_api_refuses_every_json_number_for_money(value: float) -> None:
    with pytest.raises(
        msgspec.ValidationError, match=r"\(in quotes\), not the number .* at `\$\.bid`"
    ):
        check_decimals({"id": "p", "bid": value}, BidProfile, integers=False)


def test_typed_leaves_follow_the_model_and_skip_what_does_not_fit() -> None:
    data = {"id": "p", "bid": "1", "caps": {"budget_daily": "2", "zzz": 1}, "hours": {"mon": ["x"]}}
    leaves = {path: value for path, value, _ in typed_leaves(data, BidProfile)}
    assert leaves == {
        "$.id": "p",
        "$.bid": "1",
        "$.caps.budget_daily": "2",
        "$.hours.mon[0]": "x",
    }
