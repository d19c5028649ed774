"""dce/configsync.py: seeding at start, the diff as printed, the TOML export.

The commands themselves (through a running switch, and directly on the database) run as real
processes in tests/integration/test_config_apply.py.
"""

from __future__ import annotations

import io
import tomllib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from api.config import export
from compliance.policy import CompliancePolicy
from dce.configsync import differs_line, render_diff, seed_or_compare, to_toml
from exchange.models import (
    BidProfile,
    Buyer,
    Campaign,
    Caps,
    DuplicateRule,
    Endpoint,
    ExchangeConfig,
    Trunk,
    config_from_file,
)
from store.config_diff import ConfigDiff, FieldChange, ObjectChange
from store.database import Store


def rich_config() -> ExchangeConfig:
    return ExchangeConfig(
        trunks=[
            Trunk(id="t1", name='Seller "One"\\ \u00e9\t', source_ips=["192.0.2.0/24"]),
            Trunk(id="t2", name="Digest", username="u", password="pw", ws_token="w" * 20),
        ],
        campaigns=[
            Campaign(
                id="c1",
                name="Auto",
                numbers=["+18005550100"],
                reserve=Decimal("1.25"),
                compliance=CompliancePolicy(dnc_lists=["federal"], fraud_threshold=100),
            ),
        ],
        buyers=[
            Buyer(
                id="b1",
                name="Buyer One",
                api_key="bk_" + "k" * 30,
                endpoints=[Endpoint(id="e1", uri="sip:b1@192.0.2.10;transport=tcp")],
                profiles=[
                    BidProfile(
                        id="p1",
                        campaign_id="c1",
                        bid=Decimal("12.000001"),
                        hours={"mon": ["09:00-17:00"], "sat": []},
                        caps=Caps(daily=100, budget_daily=Decimal("500")),
                        duplicate=DuplicateRule(window_days=30),
                    ),
                    BidProfile(id="p2", bid=Decimal(3), active=False),
                ],
            ),
            Buyer(id="b2", name="Fallback"),
        ],
    )


def test_export_round_trips_through_toml_without_secrets() -> None:
    cfg = rich_config()
    text = to_toml(cfg)
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert '"pw"' not in body and "bk_" not in body
    assert "password" not in body and "username" not in body
    back = config_from_file(tomllib.loads(text))
    assert back == export(cfg)
    assert back.trunks[1].ws_token == "w" * 20  # not a write-only secret: the API shows it
    assert back.buyers[0].profiles[0].hours == {"mon": ["09:00-17:00"], "sat": []}


def test_export_of_nothing_is_a_valid_empty_file() -> None:
    assert config_from_file(tomllib.loads(to_toml(ExchangeConfig()))) == ExchangeConfig()


def test_render_diff() -> None:
    diff = ConfigDiff(
        changes=[
            ObjectChange(action="add", kind="trunk", id="t3"),
            ObjectChange(
                action="change",
                kind="profile",
                id="p1",
                buyer_id="b1",
                fields=[
                    FieldChange(field="bid", old='"12.00"', new='"13.00"'),
                    FieldChange(field="caps.daily", old=None, new="5"),
                ],
            ),
            ObjectChange(
                action="change",
                kind="trunk",
                id="t2",
                fields=[
                    FieldChange(field="password", old="***", new="***", secret=True),
                    FieldChange(field="ws_token", old=None, new="***", secret=True),
                ],
            ),
            ObjectChange(action="keep", kind="buyer", id="b9"),
            ObjectChange(action="remove", kind="endpoint", id="e2", buyer_id="b1"),
        ],
        prune=True,
    )
    assert render_diff(diff) == [
        "+ trunks/t3  (new)",
        "~ buyers/b1/profiles/p1",
        '      bid: "12.00" -> "13.00"',
        "      caps.daily: unset -> 5",
        "~ trunks/t2",
        "      password: changed (secret, not shown)",
        "      ws_token: set (secret, not shown)",
        "= buyers/b9  (only in the database: kept; --prune removes it)",
        "- buyers/b1/endpoints/e2  (removed: not in the file)",
    ]


def test_differs_line() -> None:
    diff = ConfigDiff(changes=[], prune=False, added=1, changed=2)
    assert differs_line(Path("dce.toml"), diff) == (
        "config: dce.toml differs from the database (1 to add, 2 to change); the database is "
        "in use. See the diff: dce config apply dce.toml --dry-run"
    )


# -- at start ---------------------------------------------------------------------------------


@pytest.fixture
async def store(database_url: str, pg_schema: str) -> AsyncIterator[Store]:
    s = Store(schema=pg_schema)
    await s.connect(database_url)
    await s.migrate()
    yield s
    await s.close()


async def test_first_start_seeds_then_the_database_wins(store: Store) -> None:
    path = Path("dce.toml")
    cfg = rich_config()
    out = io.StringIO()
    got = await seed_or_compare(store, cfg, path, out)
    assert out.getvalue() == ""  # seeded: nothing to say
    assert got.buyers[0].profiles[0].bid == Decimal("12.000001")
    # Same file again: silent.
    await seed_or_compare(store, cfg, path, out)
    assert out.getvalue() == ""
    # An API change: the next start keeps it and says the file differs.
    p1 = got.buyers[0].profiles[0]
    await store.exchange.update_child(
        "profiles", "b1", msgspec.structs.replace(p1, bid=Decimal("13.00"))
    )
    got = await seed_or_compare(store, cfg, path, out)
    assert got.buyers[0].profiles[0].bid == Decimal("13.00")
    assert out.getvalue() == (
        "config: dce.toml differs from the database (1 to change); the database is in use. "
        "See the diff: dce config apply dce.toml --dry-run\n"
    )


async def test_a_start_without_a_file_says_nothing(store: Store) -> None:
    await seed_or_compare(store, rich_config(), Path("a.toml"), io.StringIO())
    out = io.StringIO()
    got = await seed_or_compare(store, ExchangeConfig(), None, out)
    assert out.getvalue() == "" and len(got.buyers) == 2  # objects only stored are kept
