"""What applying a config file's trunks, campaigns and buyers would change in the database.

The database is the one source of truth for exchange objects: a config file seeds it once
(``ExchangeTables.seed_config``) and after that changes it only through ``dce config apply``,
which shows this diff first. ``plan(file, stored, ...)`` is pure: it compares
the two configs and returns the diff and the ``target``, what the database holds afterwards.

Rules:

* Objects match by id: trunks, campaigns and buyers at the top, a buyer's endpoints and profiles
  within that buyer. In the file and not stored: ``add``. In both and different: ``change``,
  with every field that differs (nested tables such as ``caps`` and ``compliance`` field by
  field, lists as a whole). Stored only: ``keep``, or ``remove`` with ``prune``.
* A file buyer's endpoints and profiles are the file's, in the file's order (the failover
  order), then the stored ones the file does not name, in their stored order (without
  ``prune``). A changed order is a change of the buyer (field ``endpoints (order)``).
* Secrets are never shown: a changed trunk ``password`` or ``ws_token`` or buyer ``api_key``
  is reported as ``***`` (``secret`` true), set or not set. Buyer API keys are stored as
  SHA-256 only, so a key is compared by its hash. Exports leave out the secrets, so a file
  without them keeps the stored ones: a buyer without ``api_key`` keeps its key, and a trunk
  with neither ``username`` nor ``password`` keeps its digest credentials (to remove them, use
  the admin API).

Values in a ``FieldChange`` are JSON text (``"12.00"``, ``true``, ``["+18005550100"]``);
``None`` means not set.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypeVar

import msgspec

from exchange.errors import ConfigInvalid
from exchange.models import BidProfile, Buyer, Campaign, Endpoint, ExchangeConfig, Trunk

__all__ = [
    "SECRET",
    "ConfigDiff",
    "FieldChange",
    "ObjectChange",
    "Plan",
    "plan",
]

Action = Literal["add", "change", "remove", "keep"]
Kind = Literal["trunk", "campaign", "buyer", "endpoint", "profile"]
SECRET = "***"
# Shown as SECRET when they differ (a buyer's api_key is compared by its hash, in plan()).
_SECRET_FIELDS: Mapping[str, frozenset[str]] = {"trunk": frozenset({"password", "ws_token"})}
_O = TypeVar("_O", Trunk, Campaign, Buyer, Endpoint, BidProfile)


class FieldChange(msgspec.Struct, kw_only=True):
    """One field that differs: its path in the object, stored value, file value (JSON text)."""

    field: str
    old: str | None
    new: str | None
    secret: bool = False


class ObjectChange(msgspec.Struct, kw_only=True):
    """One object that the file adds, changes, or does not name (kept, or removed by prune)."""

    action: Action
    kind: Kind
    id: str
    buyer_id: str | None = None  # endpoints and profiles: their buyer
    fields: list[FieldChange] = []

    @property
    def path(self) -> str:
        """``trunks/t1``, ``buyers/b1/profiles/p1``."""
        own = f"{self.kind}s/{self.id}"
        return own if self.buyer_id is None else f"buyers/{self.buyer_id}/{own}"


class ConfigDiff(msgspec.Struct, kw_only=True):
    """The difference between a config file and the database, and whether it was applied."""

    changes: list[ObjectChange]
    prune: bool
    applied: bool = False
    added: int = 0
    changed: int = 0
    removed: int = 0
    kept: int = 0  # objects only in the database, left alone (without prune)

    @property
    def pending(self) -> int:
        """How many objects applying would write or delete."""
        return self.added + self.changed + self.removed


@dataclass(frozen=True, slots=True)
class Plan:
    """The diff, and what the database holds once it is applied.

    ``target`` lists the file's objects first, in the file's order, then the kept ones, so a
    field path into the file (``buyers[1].profiles[0]``) is the same path into ``target``.
    ``key_hashes`` is each target buyer's API key hash (None: no key); ``new_keys`` are the
    buyers whose key the file sets.
    """

    diff: ConfigDiff
    target: ExchangeConfig
    key_hashes: Mapping[str, str | None]
    new_keys: frozenset[str]
    removed: Sequence[ObjectChange]


# ----------------------------------------------------------------------------------------------
# Values


def _plain(obj: Any) -> Any:
    """Plain data with every field, defaults included (so ``active: true -> false`` shows)."""
    if isinstance(obj, msgspec.Struct):
        return {f: _plain(getattr(obj, f)) for f in obj.__struct_fields__}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Decimal):
        return str(obj)  # "12.00" and "12.0" differ in the stored document too
    return obj


def _text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _field_changes(
    old: Mapping[str, Any], new: Mapping[str, Any], secret: frozenset[str], prefix: str = ""
) -> list[FieldChange]:
    out: list[FieldChange] = []
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        name = f"{prefix}{key}"
        if not prefix and key in secret:
            out.append(
                FieldChange(
                    field=name,
                    old=None if a is None else SECRET,
                    new=None if b is None else SECRET,
                    secret=True,
                )
            )
        elif isinstance(a, dict) and isinstance(b, dict):
            out += _field_changes(a, b, frozenset(), f"{name}.")
        else:
            out.append(FieldChange(field=name, old=_text(a), new=_text(b)))
    return out


def _own_fields(obj: msgspec.Struct, skip: Iterable[str] = ()) -> dict[str, Any]:
    plain = _plain(obj)
    for name in skip:
        plain.pop(name, None)
    return plain  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------------------------
# The plan


def _unique(items: Sequence[_O], where: str, kind: str) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.id in seen:
            raise ConfigInvalid(f"{where}[{i}].id", f"duplicate {kind} id {item.id!r}")
        seen.add(item.id)


def _check_file(cfg: ExchangeConfig) -> None:
    """Ids unique, API keys unique: the diff matches objects by id, the store keys by hash."""
    _unique(cfg.trunks, "trunks", "trunk")
    _unique(cfg.campaigns, "campaigns", "campaign")
    _unique(cfg.buyers, "buyers", "buyer")
    keys: dict[str, str] = {}
    for i, b in enumerate(cfg.buyers):
        _unique(b.endpoints, f"buyers[{i}].endpoints", "endpoint")
        _unique(b.profiles, f"buyers[{i}].profiles", "profile")
        if b.api_key is not None:
            if b.api_key in keys:
                raise ConfigInvalid(
                    f"buyers[{i}].api_key", f"the same API key as buyer {keys[b.api_key]!r}"
                )
            keys[b.api_key] = b.id


def _keep_credentials(file: Trunk, stored: Trunk | None) -> Trunk:
    """A file trunk without digest credentials keeps the stored ones (exports omit them)."""
    if stored is None or file.username is not None or file.password is not None:
        return file
    return msgspec.structs.replace(file, username=stored.username, password=stored.password)


class _Differ:
    def __init__(self, prune: bool) -> None:
        self.prune = prune
        self.changes: list[ObjectChange] = []
        self.removed: list[ObjectChange] = []

    def note(self, change: ObjectChange) -> None:
        self.changes.append(change)
        if change.action == "remove":
            self.removed.append(change)

    def merge(
        self,
        kind: Kind,
        file: Sequence[_O],
        stored: Sequence[_O],
        *,
        buyer_id: str | None = None,
    ) -> list[_O]:
        """The target list of one collection; notes what is added, changed, kept, removed."""
        old = {x.id: x for x in stored}
        secret = _SECRET_FIELDS.get(kind, frozenset())
        for x in file:
            prev = old.get(x.id)
            if prev is None:
                self.note(ObjectChange(action="add", kind=kind, id=x.id, buyer_id=buyer_id))
                continue
            fields = _field_changes(_own_fields(prev), _own_fields(x), secret)
            if fields:
                self.note(
                    ObjectChange(
                        action="change", kind=kind, id=x.id, buyer_id=buyer_id, fields=fields
                    )
                )
        named = {x.id for x in file}
        target = list(file)
        for x in stored:
            if x.id in named:
                continue
            action: Action = "remove" if self.prune else "keep"
            self.note(ObjectChange(action=action, kind=kind, id=x.id, buyer_id=buyer_id))
            if not self.prune:
                target.append(x)
        return target


def _order(name: str, old: Sequence[_O], new: Sequence[_O]) -> list[FieldChange]:
    """The failover order of a buyer's endpoints (or profiles), when it changes."""
    a, b = [x.id for x in old], [x.id for x in new]
    if a == b or not a or not b:  # a buyer's first (or last) child is an add (remove), not order
        return []
    in_a, in_b = set(a), set(b)
    staying = [i for i in b if i in in_a]
    if staying == [i for i in a if i in in_b] and b[: len(staying)] == staying:
        return []  # removals, and additions after the rest: the adds and removes say it all
    return [FieldChange(field=f"{name} (order)", old=_text(a), new=_text(b))]


def plan(
    file: ExchangeConfig,
    stored: ExchangeConfig,
    key_hashes: Mapping[str, str | None],
    file_key_hashes: Mapping[str, str],
    *,
    prune: bool = False,
) -> Plan:
    """Compare a config file with what is stored (see the module docstring for the rules).

    Args:
        file: the config file's trunks, campaigns and buyers.
        stored: ``ExchangeTables.read_config()`` (API keys None).
        key_hashes: each stored buyer's API key hash (``hash_api_key``).
        file_key_hashes: the hash of each file buyer's ``api_key``, for buyers that have one.
        prune: remove stored objects the file does not name.

    Raises:
        ConfigInvalid: the file repeats an id or an API key (``field`` names it).
    """
    _check_file(file)
    d = _Differ(prune)
    stored_trunks = {t.id: t for t in stored.trunks}
    trunks = d.merge(
        "trunk", [_keep_credentials(t, stored_trunks.get(t.id)) for t in file.trunks],
        stored.trunks,
    )  # fmt: skip
    campaigns = d.merge("campaign", file.campaigns, stored.campaigns)
    stored_buyers = {b.id: b for b in stored.buyers}
    hashes: dict[str, str | None] = {}
    new_keys: set[str] = set()
    buyers: list[Buyer] = []
    skip = ("api_key", "endpoints", "profiles")
    for b in file.buyers:
        prev = stored_buyers.get(b.id)
        new_hash = file_key_hashes.get(b.id)
        hashes[b.id] = new_hash if new_hash is not None else key_hashes.get(b.id)
        if new_hash is not None:
            new_keys.add(b.id)
        if prev is None:
            d.note(ObjectChange(action="add", kind="buyer", id=b.id))
            d.changes += [
                ObjectChange(action="add", kind="endpoint", id=e.id, buyer_id=b.id)
                for e in b.endpoints
            ]
            d.changes += [
                ObjectChange(action="add", kind="profile", id=p.id, buyer_id=b.id)
                for p in b.profiles
            ]
            buyers.append(b)
            continue
        entry = ObjectChange(action="change", kind="buyer", id=b.id)
        entry.fields = _field_changes(_own_fields(prev, skip), _own_fields(b, skip), frozenset())
        if new_hash is not None and new_hash != key_hashes.get(b.id):
            old_key = SECRET if key_hashes.get(b.id) else None
            entry.fields.append(FieldChange(field="api_key", old=old_key, new=SECRET, secret=True))
        at = len(d.changes)
        endpoints = d.merge("endpoint", b.endpoints, prev.endpoints, buyer_id=b.id)
        profiles = d.merge("profile", b.profiles, prev.profiles, buyer_id=b.id)
        entry.fields += _order("endpoints", prev.endpoints, endpoints)
        entry.fields += _order("profiles", prev.profiles, profiles)
        if entry.fields:
            d.changes.insert(at, entry)  # the buyer's own line before its children's
        buyers.append(msgspec.structs.replace(b, endpoints=endpoints, profiles=profiles))
    named = {b.id for b in file.buyers}
    for b in stored.buyers:
        if b.id in named:
            continue
        d.note(ObjectChange(action="remove" if prune else "keep", kind="buyer", id=b.id))
        if not prune:
            buyers.append(b)
            hashes[b.id] = key_hashes.get(b.id)
    counts = {a: 0 for a in ("add", "change", "remove", "keep")}
    for c in d.changes:
        counts[c.action] += 1
    diff = ConfigDiff(
        changes=d.changes,
        prune=prune,
        added=counts["add"],
        changed=counts["change"],
        removed=counts["remove"],
        kept=counts["keep"],
    )
    target = ExchangeConfig(trunks=trunks, campaigns=campaigns, buyers=buyers)
    return Plan(diff, target, hashes, frozenset(new_keys), tuple(d.removed))
