"""The check tests/api/test_schemathesis.py adds to schemathesis: ``positive_data_documented``.

schemathesis's ``positive_data_acceptance`` fails every schema-valid request the server
refuses. Some rules JSON Schema cannot say (a known time zone, a phone number, an object
that must exist); /openapi.json marks those fields ``x-checked`` (api/validation.py CHECKED).
This check is ``positive_data_acceptance`` with that one exception: a 422 is accepted only when
the field it names (``detail.field``: a body path such as ``profiles[0].timezone``, or a
parameter) is marked ``x-checked`` on the way to it. Any other refusal of a schema-valid
request is a mismatch between the document and the server.

Loaded by schemathesis through ``SCHEMATHESIS_HOOKS=tests.api.schemathesis_hooks``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import is_unexpected_http_status_case

# What positive_data_acceptance accepts by default, less 5xx (not_a_server_error's business)
# and 3xx/429 (never answered here): 2xx, wrong or missing credentials, missing or conflicting
# objects.
_ACCEPTED = {401, 403, 404, 409}
_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _node_path(ref: str) -> list[str]:
    return ref.removeprefix("#/").split("/")


def _deref(node: Any, root: dict[str, Any]) -> Any:
    """``node`` with its ``$ref`` (if any) followed."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = root
        for part in _node_path(node["$ref"]):
            target = target[part]
        node = target
    return node


def _checked(schema: Any, tokens: list[str | int], root: dict[str, Any]) -> bool:
    """Whether a schema on the way down ``tokens`` from ``schema`` says ``x-checked``."""
    schema = _deref(schema, root)
    if not isinstance(schema, dict):
        return False
    if "x-checked" in schema:
        return True
    if "anyOf" in schema:
        return any(_checked(b, tokens, root) for b in schema["anyOf"])
    if not tokens:
        return False
    head, rest = tokens[0], tokens[1:]
    if isinstance(head, int):
        return _checked(schema.get("items", {}), rest, root)
    props = schema.get("properties", {})
    if head in props:
        return _checked(props[head], rest, root)
    extra = schema.get("additionalProperties")
    return isinstance(extra, dict) and _checked(extra, rest, root)


def _tokens(field: str) -> list[str | int]:
    return [int(i) if i else name for name, i in _TOKEN.findall(field)]


def documented(operation: dict[str, Any], root: dict[str, Any], field: str) -> bool:
    """Whether the document says a value of ``field`` may fail a check beyond its schema."""
    for param in operation.get("parameters", []):
        param = _deref(param, root)
        if param.get("name") == field:
            return "x-checked" in _deref(param.get("schema", {}), root)
    body = operation.get("requestBody", {}).get("content", {})
    for media in body.values():
        tokens = [] if field in ("", "body") else _tokens(field)
        if _checked(media.get("schema", {}), tokens, root):
            return True
    return False


@schemathesis.check
def positive_data_documented(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or is_unexpected_http_status_case(case):
        return None
    status = response.status_code
    if 200 <= status < 300 or status in _ACCEPTED or status >= 500:
        return None
    field = None
    if status == 422:
        try:
            detail = json.loads(response.content).get("detail")
        except (ValueError, AttributeError):
            detail = None
        if isinstance(detail, dict) and isinstance(detail.get("field"), str):
            field = detail["field"]
            root = case.operation.schema.raw_schema
            if documented(case.operation.definition.raw, root, field):
                return None
    raise AssertionError(
        f"Schema-valid request refused with {status}"
        + (f" on `{field}`, a field not marked x-checked" if field is not None else "")
        + f": {response.content[:300]!r}"
    )
