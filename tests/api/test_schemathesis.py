"""/openapi.json says what the server does: schemathesis against the real API finds nothing.

The ``api`` fixture's server (aiohttp on 127.0.0.1 over a real PostgreSQL schema) is tested by
the schemathesis command line (pinned in pyproject.toml), in a subprocess while this test's loop
serves it. Its checks: no 5xx, every status and content type documented, every answer valid
against its schema, every schema-violating request refused, and every schema-valid one
accepted unless the document marks the field's rule ``x-checked`` (tests/api/
schemathesis_hooks.py). Bounded and deterministic: a fixed seed, derandomized generation,
one worker, a fixed number of examples per operation (the coverage phase's cases are fixed by
the document), and a deadline per run that kills a hung one. (schemathesis's ``--max-time`` is
no deadline: fuzzing repeats until it is spent.) About 2,900 requests, ~20 s on an idle
2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.api.conftest import ADMIN_TOKEN, KEY_B1, Api

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
DEADLINE = 120.0  # seconds per run; a run takes ~3 s (buyer) and ~16 s (admin)
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "positive_data_documented",  # positive_data_acceptance, knowing x-checked
    )
)


async def _schemathesis(api: Api, tmp_path: Path, name: str, token: str, *args: str) -> None:
    """One schemathesis run; fails the test with its own report unless it found nothing."""
    report = tmp_path / f"{name}.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
        "run", str(api.client.make_url("/openapi.json")),
        "--header", f"Authorization: Bearer {token}",
        "--checks", CHECKS,
        "--seed", "20261123", "--generation-deterministic", "--workers", "1",
        "--no-color",
        "--report", "json", "--report-json-path", str(report),
        *args,
    ]  # fmt: skip
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
    }
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=tmp_path,  # its cache directory
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=DEADLINE)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"schemathesis ({name}) still running after {DEADLINE} s") from None
    text = out.decode(errors="replace")
    summary: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {}
    print(f"\n--- schemathesis ({name}) ---\n" + text[text.find("SUMMARY") - 40 :])
    assert summary, text[-4000:]
    assert summary["failures"] == [], text[-8000:]
    assert summary["errors"] == [], text[-8000:]
    assert proc.returncode == 0, text[-4000:]
    assert summary["stop_reason"] == "completed", summary["stop_reason"]
    ops = summary["operations"]
    assert ops["tested"] == ops["selected"] > 0, ops


async def test_openapi_json_matches_the_server(api: Api, tmp_path: Path) -> None:
    # A buyer key first (the admin run deletes and rewrites buyers): its own routes, where
    # 403 (admin only) and 404 (another buyer's) are the answers to check.
    # Valid requests only: the admin run below sends the invalid ones.
    await _schemathesis(
        api, tmp_path, "buyer", KEY_B1,
        "--include-path-regex", "^/api/v1/(buyers|calls|reports)", "--mode", "positive",
        "--phases", "examples,fuzzing", "--max-examples", "3",
    )  # fmt: skip
    await _schemathesis(
        api, tmp_path, "admin", ADMIN_TOKEN,
        "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", "3",
    )  # fmt: skip
