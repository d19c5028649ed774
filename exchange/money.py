"""Exact money: integer micro-dollars inside, decimal strings at the API and database edges."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import NewType

Micros = NewType("Micros", int)

MICROS_PER_USD = 1_000_000
_QUANTUM = Decimal("0.000001")


def to_micros(amount: Decimal | str | int) -> Micros:
    """USD (Decimal, decimal string or whole dollars) -> micro-dollars. Floats are refused."""
    if isinstance(amount, float):
        raise TypeError("money is never a float; pass a Decimal or a decimal string")
    try:
        d = Decimal(amount)
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal amount: {amount!r}") from exc
    if not d.is_finite():
        raise ValueError(f"not a finite amount: {amount!r}")
    return Micros(int((d * MICROS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN)))


def to_decimal(micros: int) -> Decimal:
    """Micro-dollars -> USD as an exact Decimal with six places."""
    return (Decimal(micros) / MICROS_PER_USD).quantize(_QUANTUM)


def share(micros: int, percent: Decimal) -> Micros:
    """``percent`` % of ``micros``, rounded half-even to the micro-dollar (seller payouts)."""
    return Micros(
        int((Decimal(micros) * percent / 100).to_integral_value(rounding=ROUND_HALF_EVEN))
    )
