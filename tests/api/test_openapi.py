"""api/openapi.py: the document /openapi.json serves, and docs/api.md made from it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from api.app import ROUTES
from api.openapi import document, encode, markdown
from api.routes import API_PREFIX
from tests.api.conftest import Api

V = API_PREFIX


async def test_openapi_lists_every_path(api: Api) -> None:
    doc = (await api.call("GET", "/openapi.json", who="none")).body
    assert doc["openapi"].startswith("3.")
    for r in ROUTES:
        op = doc["paths"][V + r.path][r.method.lower()]
        assert op["operationId"] == r.name
        assert "responses" in op
    assert "/openapi.json" in doc["paths"]
    schemas = doc["components"]["schemas"]
    for name in ("Trunk", "Campaign", "BidProfile", "Caps", "Endpoint", "BuyerView", "ErrorBody",
                 "CallPage", "CallDetail", "ConsentRecord", "ErasureResult"):  # fmt: skip
        assert name in schemas
    # Every $ref resolves.
    refs = set(_refs(doc))
    assert refs and all(ref.removeprefix("#/components/schemas/") in schemas for ref in refs)
    same = (await api.call("GET", f"{V}/openapi.json", who="none")).body
    assert same == doc


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        for v in node.values():
            out += _refs(v)
        return out
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


# ----------------------------------------------------------------------------------------------
# docs/api.md: rendered from the same document, never stale

ROOT = Path(__file__).resolve().parents[2]


def test_docs_api_md_is_what_the_generator_prints() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "api.openapi"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert (ROOT / "docs" / "api.md").read_text() == printed, (
        "docs/api.md is stale: run `.venv/bin/python -m api.openapi > docs/api.md`"
    )


def test_markdown_has_every_route_with_who_parameters_body_and_answers() -> None:
    text = markdown(ROUTES)
    doc = document(ROUTES)
    assert text.startswith("# DCE admin API\n")
    for heading in ("## Authentication", "## Errors", "## Money and times", "## Pagination"):
        assert f"\n{heading}\n" in text
    sections = text.split('<a id="')
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            section = next(s for s in sections if s.startswith(f'{op["operationId"]}"'))
            assert f"### `{method.upper()} {path}`" in section
            who = re.search(r"Who may call it: ([^.]+)\.", section)
            assert who is not None
            if "security" not in op:
                assert who[1] == "anyone, no token"
            elif "403" in op["responses"]:
                assert who[1] == "admin token"
            else:
                assert who[1].startswith("admin token, or the buyer's key")
            for p in op.get("parameters", []):
                assert f"| `{p['name']}` | {p['in']} |" in section
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            ref = body.get("schema", {}).get("$ref")
            if ref is not None:
                schema = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]
                for field in schema["properties"]:
                    assert f"| `{field}` |" in section
            for status in op["responses"]:
                assert f"\n| {status} |" in section
    for name in doc["components"]["schemas"]:
        assert f'<a id="schema-{name.lower()}"></a>\n\n### {name}\n' in text


async def test_the_served_document_is_the_generated_one(api: Api) -> None:
    async with api.client.get("/openapi.json") as resp:
        assert await resp.read() == encode(document(ROUTES))
