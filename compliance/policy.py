"""A campaign's compliance policy: what the gate (compliance/check.py) checks for its calls.

The policy is compliance's own model. The exchange's ``Campaign`` carries one, and the config
file and the admin API fill it in; nothing here knows about campaigns or buyers.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Attestation = Literal["A", "B", "C"]
# "HH:MM-HH:MM" in 24-hour time; "00:00-24:00" is the whole day.
TimeRange = Annotated[
    str,
    msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]-(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"),
]


class CompliancePolicy(
    msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    """What the compliance gate checks for a campaign's calls; unknown fields are errors."""

    calling_hours: bool = True
    hours_window: TimeRange = "08:00-21:00"
    consent_required: bool = False
    dnc_lists: list[str] = []
    min_attestation: Attestation | None = None
    fraud_threshold: Annotated[int, msgspec.Meta(ge=0, le=100)] = 80
