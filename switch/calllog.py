"""A log adapter that puts the call id on every line a call writes (aioquic's
``QuicConnectionAdapter``): ``call.log.info("...", extra={...})`` merges the call's fields
with the line's own."""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any


class CallLog(logging.LoggerAdapter[logging.Logger]):
    def __init__(self, logger: logging.Logger, call_id: str) -> None:
        super().__init__(logger, {"call_id": call_id})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        # LoggerAdapter.process replaces ``extra``; merge instead, so a line can add fields.
        own: Mapping[str, object] = self.extra or {}
        extra = kwargs.get("extra")
        kwargs["extra"] = {**own, **extra} if extra else dict(own)
        return msg, kwargs
