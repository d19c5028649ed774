"""store/config_diff.py: what applying a config file would change, field by field (no I/O)."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from exchange.errors import ConfigInvalid
from exchange.models import (
    BidProfile,
    Buyer,
    Campaign,
    Caps,
    Endpoint,
    ExchangeConfig,
    Trunk,
)
from store.config_diff import SECRET, ConfigDiff, FieldChange, ObjectChange, plan
from store.exchange import hash_api_key

KEY = "bk_live_" + "k" * 24


def stored() -> ExchangeConfig:
    return ExchangeConfig(
        trunks=[
            Trunk(id="t1", name="Seller", source_ips=["192.0.2.0/24"]),
            Trunk(id="t2", name="Digest", username="u", password="secret-pw"),
        ],
        campaigns=[Campaign(id="c1", name="Auto", numbers=["+18005550100"])],
        buyers=[
            Buyer(
                id="b1",
                name="Buyer One",
                endpoints=[
                    Endpoint(id="e1", uri="sip:b1@192.0.2.10"),
                    Endpoint(id="e2", uri="sip:b1@192.0.2.11"),
                ],
                profiles=[
                    BidProfile(id="p1", campaign_id="c1", bid=Decimal("12.00"), caps=Caps(daily=10))
                ],
            ),
        ],
    )


HASHES = {"b1": hash_api_key(KEY)}


def diff_of(
    file: ExchangeConfig,
    db: ExchangeConfig | None = None,
    *,
    prune: bool = False,
    hashes: dict[str, str | None] | None = None,
) -> ConfigDiff:
    file_hashes = {b.id: hash_api_key(b.api_key) for b in file.buyers if b.api_key}
    return plan(
        file, db or stored(), HASHES if hashes is None else hashes, file_hashes, prune=prune
    ).diff


def with_profile(cfg: ExchangeConfig, **changes: object) -> ExchangeConfig:
    b = cfg.buyers[0]
    p = msgspec.structs.replace(b.profiles[0], **changes)
    return msgspec.structs.replace(
        cfg, buyers=[msgspec.structs.replace(b, profiles=[p]), *cfg.buyers[1:]]
    )


def test_same_config_is_no_change() -> None:
    d = diff_of(stored())
    assert d.changes == [] and d.pending == 0


def test_changed_bid_is_one_field() -> None:
    d = diff_of(with_profile(stored(), bid=Decimal("13.00")))
    assert d.changes == [
        ObjectChange(
            action="change",
            kind="profile",
            id="p1",
            buyer_id="b1",
            fields=[FieldChange(field="bid", old='"12.00"', new='"13.00"')],
        )
    ]
    assert (d.added, d.changed, d.removed, d.pending) == (0, 1, 0, 1)
    assert d.changes[0].path == "buyers/b1/profiles/p1"


def test_nested_tables_diff_field_by_field_and_defaults_show() -> None:
    file = with_profile(stored(), caps=Caps(daily=20, hourly=5), active=False)
    fields = diff_of(file).changes[0].fields
    assert fields == [
        FieldChange(field="caps.hourly", old=None, new="5"),
        FieldChange(field="caps.daily", old="10", new="20"),
        FieldChange(field="active", old="true", new="false"),
    ]


def test_decimal_text_counts() -> None:
    """12.0 and 12.00 are equal amounts but different stored documents: shown, not hidden."""
    d = diff_of(with_profile(stored(), bid=Decimal("12.0")))
    assert d.changes[0].fields == [FieldChange(field="bid", old='"12.00"', new='"12.0"')]


def test_added_objects_and_a_new_buyers_children() -> None:
    cfg = stored()
    file = msgspec.structs.replace(
        cfg,
        trunks=[*cfg.trunks, Trunk(id="t3", name="New")],
        buyers=[
            *cfg.buyers,
            Buyer(
                id="b2",
                name="Two",
                endpoints=[Endpoint(id="x", uri="sip:b2@192.0.2.20")],
                profiles=[BidProfile(id="q", bid=Decimal(1))],
            ),
        ],
    )
    d = diff_of(file)
    assert [(c.action, c.path) for c in d.changes] == [
        ("add", "trunks/t3"),
        ("add", "buyers/b2"),
        ("add", "buyers/b2/endpoints/x"),
        ("add", "buyers/b2/profiles/q"),
    ]
    assert d.added == 4


def test_objects_only_in_the_database_are_kept_or_pruned() -> None:
    cfg = stored()
    b1 = cfg.buyers[0]
    file = ExchangeConfig(
        trunks=[cfg.trunks[0]],
        campaigns=cfg.campaigns,
        buyers=[msgspec.structs.replace(b1, endpoints=[b1.endpoints[0]])],
    )
    kept = plan(file, cfg, HASHES, {}, prune=False)
    assert [(c.action, c.path) for c in kept.diff.changes] == [
        ("keep", "trunks/t2"),
        ("keep", "buyers/b1/endpoints/e2"),
    ]
    assert kept.diff.pending == 0 and kept.diff.kept == 2
    assert [t.id for t in kept.target.trunks] == ["t1", "t2"]
    assert [e.id for e in kept.target.buyers[0].endpoints] == ["e1", "e2"]

    pruned = plan(file, cfg, HASHES, {}, prune=True)
    assert [(c.action, c.path) for c in pruned.diff.changes] == [
        ("remove", "trunks/t2"),
        ("remove", "buyers/b1/endpoints/e2"),
    ]
    assert pruned.diff.removed == 2 and pruned.diff.pending == 2
    assert [t.id for t in pruned.target.trunks] == ["t1"]
    assert [e.id for e in pruned.target.buyers[0].endpoints] == ["e1"]
    assert [c.path for c in pruned.removed] == ["trunks/t2", "buyers/b1/endpoints/e2"]


def test_a_buyer_only_in_the_database() -> None:
    cfg = stored()
    file = msgspec.structs.replace(cfg, buyers=[])
    assert [(c.action, c.path) for c in diff_of(file).changes] == [("keep", "buyers/b1")]
    p = plan(file, cfg, HASHES, {}, prune=True)
    # Its endpoints and profiles go with it (ON DELETE CASCADE): one entry.
    assert [(c.action, c.path) for c in p.diff.changes] == [("remove", "buyers/b1")]
    assert p.target.buyers == []


def test_failover_order_is_a_change_of_the_buyer() -> None:
    cfg = stored()
    b1 = cfg.buyers[0]
    swapped = msgspec.structs.replace(b1, endpoints=list(reversed(b1.endpoints)))
    d = diff_of(msgspec.structs.replace(cfg, buyers=[swapped]))
    assert d.changes == [
        ObjectChange(
            action="change",
            kind="buyer",
            id="b1",
            fields=[FieldChange(field="endpoints (order)", old='["e1", "e2"]', new='["e2", "e1"]')],
        )
    ]


def test_new_endpoint_first_changes_the_order_but_appended_does_not() -> None:
    cfg = stored()
    b1 = cfg.buyers[0]
    new = Endpoint(id="e0", uri="sip:b1@192.0.2.9")
    first = diff_of(
        msgspec.structs.replace(
            cfg, buyers=[msgspec.structs.replace(b1, endpoints=[new, *b1.endpoints])]
        )
    )
    assert [(c.action, c.path) for c in first.changes] == [
        ("change", "buyers/b1"),
        ("add", "buyers/b1/endpoints/e0"),
    ]
    assert first.changes[0].fields[0].new == '["e0", "e1", "e2"]'
    last = diff_of(
        msgspec.structs.replace(
            cfg, buyers=[msgspec.structs.replace(b1, endpoints=[*b1.endpoints, new])]
        )
    )
    assert [(c.action, c.path) for c in last.changes] == [("add", "buyers/b1/endpoints/e0")]


def test_kept_children_follow_the_files_in_the_target() -> None:
    cfg = stored()
    b1 = cfg.buyers[0]
    new = Endpoint(id="e9", uri="sip:b1@192.0.2.99")
    p = plan(
        msgspec.structs.replace(cfg, buyers=[msgspec.structs.replace(b1, endpoints=[new])]),
        cfg,
        HASHES,
        {},
    )
    assert [e.id for e in p.target.buyers[0].endpoints] == ["e9", "e1", "e2"]


# -- secrets ----------------------------------------------------------------------------------


def test_trunk_password_and_token_are_never_shown() -> None:
    cfg = stored()
    t2 = msgspec.structs.replace(cfg.trunks[1], password="new-pw", ws_token="w" * 20)
    d = diff_of(msgspec.structs.replace(cfg, trunks=[cfg.trunks[0], t2]))
    assert d.changes[0].fields == [
        FieldChange(field="password", old=SECRET, new=SECRET, secret=True),
        FieldChange(field="ws_token", old=None, new=SECRET, secret=True),
    ]
    assert "new-pw" not in msgspec.json.encode(d).decode()
    assert "secret-pw" not in msgspec.json.encode(d).decode()


def test_a_trunk_without_credentials_keeps_the_stored_ones() -> None:
    """Exports leave digest credentials out; applying an export must not drop them."""
    cfg = stored()
    bare = msgspec.structs.replace(cfg.trunks[1], username=None, password=None)
    p = plan(msgspec.structs.replace(cfg, trunks=[cfg.trunks[0], bare]), cfg, HASHES, {})
    assert p.diff.changes == []
    assert p.target.trunks[1].username == "u" and p.target.trunks[1].password == "secret-pw"


def test_changed_user_name_shows_and_the_password_does_not() -> None:
    cfg = stored()
    t2 = msgspec.structs.replace(cfg.trunks[1], username="u2", password="other")
    fields = diff_of(msgspec.structs.replace(cfg, trunks=[cfg.trunks[0], t2])).changes[0].fields
    assert fields == [
        FieldChange(field="username", old='"u"', new='"u2"'),
        FieldChange(field="password", old=SECRET, new=SECRET, secret=True),
    ]


@pytest.mark.parametrize(
    ("file_key", "stored_hash", "expected"),
    [
        (None, hash_api_key(KEY), None),  # no key in the file: the stored one stays
        (KEY, hash_api_key(KEY), None),  # the same key
        ("bk_other_" + "o" * 24, hash_api_key(KEY), (SECRET, SECRET)),
        (KEY, None, (None, SECRET)),  # a key where there was none
    ],
    ids=["absent", "same", "rotated", "new"],
)
def test_buyer_api_key_is_compared_by_hash(
    file_key: str | None, stored_hash: str | None, expected: tuple[str | None, str] | None
) -> None:
    cfg = stored()
    file = msgspec.structs.replace(
        cfg, buyers=[msgspec.structs.replace(cfg.buyers[0], api_key=file_key)]
    )
    d = diff_of(file, hashes={"b1": stored_hash})
    if expected is None:
        assert d.changes == []
    else:
        assert d.changes[0].fields == [
            FieldChange(field="api_key", old=expected[0], new=expected[1], secret=True)
        ]
    assert file_key is None or file_key not in msgspec.json.encode(d).decode()


def test_target_key_hashes() -> None:
    cfg = stored()
    new_key = "bk_new_" + "n" * 24
    file = msgspec.structs.replace(
        cfg,
        buyers=[
            cfg.buyers[0],
            Buyer(id="b2", name="Two", api_key=new_key),
        ],
    )
    p = plan(file, cfg, HASHES, {"b2": hash_api_key(new_key)})
    assert p.key_hashes == {"b1": hash_api_key(KEY), "b2": hash_api_key(new_key)}
    assert p.new_keys == {"b2"}


# -- bad files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "field"),
    [
        (ExchangeConfig(trunks=[Trunk(id="t", name="a"), Trunk(id="t", name="b")]), "trunks[1].id"),
        (
            ExchangeConfig(
                buyers=[
                    Buyer(
                        id="b",
                        name="b",
                        profiles=[BidProfile(id="p", bid=Decimal(1))] * 2,
                    )
                ]
            ),
            "buyers[0].profiles[1].id",
        ),
        (
            ExchangeConfig(
                buyers=[Buyer(id="a", name="a", api_key=KEY), Buyer(id="b", name="b", api_key=KEY)]
            ),
            "buyers[1].api_key",
        ),
    ],
    ids=["duplicate-trunk", "duplicate-profile", "shared-key"],
)
def test_a_file_that_repeats_an_id_or_key_is_refused(file: ExchangeConfig, field: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        diff_of(file)
    assert info.value.field == field
    assert KEY not in str(info.value)
