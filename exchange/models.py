"""The exchange's domain objects as the config file, the admin API and the store see them.

These are wire models: money is ``Decimal`` (USD, encoded as a decimal string), validated by
msgspec with limits in the type. Hot paths (the auction, caps) compile them into their own
integer micro-dollar form (``exchange.money``). SPEC.md "Exchange" is the contract.

Decimals (money and percentages) arrive as text: msgspec would also read a JSON or TOML number
into a ``Decimal``, by way of a binary float for 5.5, so ``check_decimals`` looks at the plain
data before it is converted and refuses numbers (the admin API) or floats (the config file,
whose integers are exact), and any text that is not ``MONEY_PATTERN``/``PERCENT_PATTERN``.
``config_from_file`` is the config file's way in.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from functools import cache
from typing import Annotated, Any, Final, Literal

import msgspec
import msgspec.inspect as mi

from compliance.policy import CompliancePolicy, TimeRange

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]

# Money is USD as a decimal string: at most six decimals and at most 999999.999999 (cdrs money
# columns are NUMERIC(12, 6)), never negative, no exponent, no sign, no spaces.
MONEY_PATTERN: Final = r"^[0-9]{1,6}(\.[0-9]{1,6})?$"
# A percentage: 0 to 100, at most six decimals.
PERCENT_PATTERN: Final = r"^(100(\.0{1,6})?|[0-9]{1,2}(\.[0-9]{1,6})?)$"
# msgspec cannot put limits on Decimal: the patterns are for /openapi.json and check_decimals,
# and __post_init__ below checks the decoded values (a ValueError there becomes a
# msgspec.ValidationError naming the field).
Usd = Annotated[
    Decimal,
    msgspec.Meta(extra_json_schema={"pattern": MONEY_PATTERN, "examples": ["12.50"]}),
]
Percent = Annotated[
    Decimal,
    msgspec.Meta(extra_json_schema={"pattern": PERCENT_PATTERN, "examples": ["70"]}),
]
Count = Annotated[int, msgspec.Meta(ge=0)]
# E.164 with the plus, e.g. "+18005550100"; config and API inputs are normalised before storing.
E164 = Annotated[str, msgspec.Meta(pattern=r"^\+[1-9][0-9]{6,14}$")]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Model(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Base of every config/API model: unknown fields are errors that name the field."""


def check_usd(value: Decimal | None, field: str) -> None:
    """Money must be a finite, non-negative amount with at most six decimal places."""
    if value is None:
        return
    if not value.is_finite() or value < 0:
        raise ValueError(f"`{field}` must be a non-negative amount, got {value}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -6:
        raise ValueError(f"`{field}` has more than 6 decimal places: {value}")


def check_percent(value: Decimal, field: str) -> None:
    if not value.is_finite() or not 0 <= value <= 100:
        raise ValueError(f"`{field}` must be between 0 and 100, got {value}")


class Trunk(Model, kw_only=True):
    """A seller: where its calls come from and what share of the price it earns."""

    id: Id
    name: Name
    source_ips: list[str] = []  # IPs or CIDRs; checked when loaded
    username: str | None = None  # digest credentials (RFC 8760)
    password: str | None = None
    # Browsers (WebRTC over ws://.../sip?token=...) are admitted by this token, never by IP.
    ws_token: Annotated[str, msgspec.Meta(min_length=16, max_length=200)] | None = None
    payout_share: Percent = Decimal(70)
    # Limits on the trunk's calls (None: no limit); a call beyond one gets 503 naming it.
    max_cps: Annotated[float, msgspec.Meta(gt=0, le=100_000)] | None = None  # new calls/s
    cps_burst: Annotated[int, msgspec.Meta(ge=1, le=100_000)] | None = None  # default ceil(max_cps)
    max_concurrent: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    active: bool = True

    def __post_init__(self) -> None:
        check_percent(self.payout_share, "payout_share")
        if (self.username is None) != (self.password is None):
            raise ValueError("`username` and `password` must be given together")
        if self.cps_burst is not None and self.max_cps is None:
            raise ValueError("`cps_burst` needs `max_cps`")


class Campaign(Model, kw_only=True):
    """Called numbers (DIDs) that select the campaign, its reserve and auction rule."""

    id: Id
    name: Name
    numbers: list[E164] = []
    reserve: Usd = Decimal(0)
    auction: Literal["second_price", "first_price"] = "second_price"
    compliance: CompliancePolicy = msgspec.field(default_factory=CompliancePolicy)
    expose_caller: bool = False  # send the caller number in RTB bid requests
    active: bool = True

    def __post_init__(self) -> None:
        check_usd(self.reserve, "reserve")


class Endpoint(Model, kw_only=True):
    """A buyer's SIP destination."""

    id: Id
    uri: Annotated[str, msgspec.Meta(min_length=5, max_length=512)]
    max_concurrent: Count = 0  # 0 = no limit
    active: bool = True


class Caps(Model, kw_only=True):
    """Per-profile limits; ``None`` is no limit. Budgets are USD spent at the settled price."""

    concurrent: Count | None = None
    hourly: Count | None = None
    daily: Count | None = None
    monthly: Count | None = None
    budget_daily: Usd | None = None
    budget_monthly: Usd | None = None

    def __post_init__(self) -> None:
        check_usd(self.budget_daily, "budget_daily")
        check_usd(self.budget_monthly, "budget_monthly")


class DuplicateRule(Model, kw_only=True):
    """The same caller is not sold twice to this buyer within ``window_days``."""

    window_days: Annotated[int, msgspec.Meta(ge=1, le=365)]
    count_on: Literal["connect", "billable"] = "connect"


class BidProfile(Model, kw_only=True):
    """What a buyer buys and at what price."""

    id: Id
    campaign_id: Id | None = None
    numbers: list[E164] = []  # called numbers, when not by campaign
    states: list[Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")]] = []
    area_codes: list[Annotated[str, msgspec.Meta(pattern=r"^[2-9][0-9]{2}$")]] = []
    # Hours of operation per weekday in ``timezone``; a day that is absent is closed. No
    # ``hours`` at all means open around the clock.
    hours: dict[Weekday, list[TimeRange]] | None = None
    timezone: str = "America/New_York"
    bid: Usd
    min_duration: Annotated[int, msgspec.Meta(ge=0, le=3600)] = 0
    caps: Caps = msgspec.field(default_factory=Caps)
    rtb_url: str | None = None
    duplicate: DuplicateRule | None = None
    active: bool = True

    def __post_init__(self) -> None:
        check_usd(self.bid, "bid")


class Buyer(Model, kw_only=True):
    """A buyer with its endpoints (tried in order) and bid profiles."""

    id: Id
    name: Name
    active: bool = True
    api_key: str | None = None  # plaintext only on input; stored hashed
    endpoints: list[Endpoint] = []
    profiles: list[BidProfile] = []


class ExchangeConfig(Model, kw_only=True):
    """The declarative part of a config file: ``[[trunks]]``, ``[[campaigns]]``, ``[[buyers]]``."""

    trunks: list[Trunk] = []
    campaigns: list[Campaign] = []
    buyers: list[Buyer] = []


# ----------------------------------------------------------------------------------------------
# Decimals as text, before msgspec converts plain data


def typed_leaves(data: Any, kind: Any) -> list[tuple[str, Any, mi.Type]]:
    """``(path, value, type)`` of every scalar in plain data ``data`` read as ``kind``.

    ``path`` is written as msgspec's messages write it (``$.buyers[0].profiles[1].bid``).
    Values where ``data`` does not fit ``kind`` (unknown fields, wrong shapes) are skipped:
    converting says what is wrong with them.
    """
    out: list[tuple[str, Any, mi.Type]] = []

    def collect(path: str, value: Any, t: mi.Type) -> Any:
        out.append((path, value, t))
        return value

    map_leaves(data, kind, collect)
    return out


def map_leaves(data: Any, kind: Any, fn: Callable[[str, Any, mi.Type], Any]) -> Any:
    """``data`` with each scalar ``typed_leaves`` finds replaced by ``fn(path, value, type)``
    (a new structure; ``data`` is not changed)."""
    return _map(data, _info(kind), "$", fn)


@cache
def _info(kind: Any) -> mi.Type:
    return mi.type_info(kind)


def _map(value: Any, t: mi.Type, path: str, fn: Callable[[str, Any, mi.Type], Any]) -> Any:
    inner = t.type if isinstance(t, mi.Metadata) else t
    if isinstance(inner, mi.UnionType):
        branch = next((b for b in inner.types if _fits(value, b)), None)
        return value if branch is None else _map(value, branch, path, fn)
    if isinstance(inner, mi.StructType) and isinstance(value, dict):
        fields = {f.encode_name: f.type for f in inner.fields}
        return {
            k: _map(v, fields[k], f"{path}.{k}", fn) if k in fields else v for k, v in value.items()
        }
    if isinstance(inner, mi.DictType) and isinstance(value, dict):
        return {k: _map(v, inner.value_type, f"{path}.{k}", fn) for k, v in value.items()}
    if isinstance(inner, mi.ListType | mi.SetType | mi.VarTupleType) and isinstance(value, list):
        return [_map(v, inner.item_type, f"{path}[{i}]", fn) for i, v in enumerate(value)]
    if isinstance(value, dict | list):
        return value
    return fn(path, value, t)


def _fits(value: Any, t: mi.Type) -> bool:
    """Whether ``value``'s JSON kind is the one union branch ``t`` reads."""
    if isinstance(t, mi.Metadata):
        t = t.type
    if value is None:
        return isinstance(t, mi.NoneType)
    if isinstance(value, dict):
        return isinstance(t, mi.StructType | mi.DictType)
    if isinstance(value, list):
        return isinstance(t, mi.ListType | mi.SetType | mi.VarTupleType)
    return not isinstance(t, mi.NoneType | mi.StructType | mi.DictType | mi.ListType)


def _pattern(t: mi.Type) -> tuple[str, str]:
    """A decimal field's pattern and example (``Usd``, ``Percent``; money for a bare one)."""
    extra = t.extra_json_schema if isinstance(t, mi.Metadata) and t.extra_json_schema else {}
    return str(extra.get("pattern", MONEY_PATTERN)), str(extra.get("examples", ["12.50"])[0])


def check_decimals(data: Any, kind: Any, *, integers: bool) -> None:
    """Refuse a decimal (money or percentage) in plain ``data`` that is not exact text.

    A float is refused everywhere, an integer unless ``integers`` (TOML integers are exact;
    the admin API takes strings only), and a string unless it matches the field's pattern.

    Raises:
        msgspec.ValidationError: naming the field as msgspec does (`` - at `$.bid` ``).
    """
    for path, value, t in typed_leaves(data, kind):
        inner = t.type if isinstance(t, mi.Metadata) else t
        if not isinstance(inner, mi.DecimalType):
            continue
        pattern, example = _pattern(t)
        if isinstance(value, str) or (integers and type(value) is int):
            text = str(value)
            if not re.fullmatch(pattern, text):
                raise msgspec.ValidationError(
                    f'Expected a decimal string like "{example}" (digits, at most 6 decimals, '
                    f"matching `{pattern}`), got {text[:40]!r} - at `{path}`"
                )
        elif isinstance(value, float) or (
            isinstance(value, int) and not isinstance(value, bool) and not integers
        ):
            text = repr(value)
            example = text if re.fullmatch(pattern, text) else example
            raise msgspec.ValidationError(
                f'Expected a decimal string such as "{example}" (in quotes), not the number '
                f"{text}: numbers may be rounded on the way - at `{path}`"
            )


def config_from_file(values: dict[str, Any]) -> ExchangeConfig:
    """The ``[[trunks]]``, ``[[campaigns]]`` and ``[[buyers]]`` of a parsed config file.

    Decimals are strings or integers there (``bid = "12.50"``, ``payout_share = 70``); a TOML
    float (``bid = 12.5``) is refused, as binary floats are not exact.

    Raises:
        msgspec.ValidationError: naming the field.
    """
    data = {k: v for k, v in values.items() if k in ("trunks", "campaigns", "buyers")}
    check_decimals(data, ExchangeConfig, integers=True)
    return msgspec.convert(data, ExchangeConfig)
