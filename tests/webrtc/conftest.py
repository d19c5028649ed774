"""Fixtures for the WebRTC tests: uvloop, the mini switch, a buyer, Chromium, a JsSIP bundle."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest
import uvloop

# `switches` (a real `dce run` per call, torn down with SIGTERM) for test_dce_run.py.
from tests.integration.conftest import server_url, switches  # noqa: F401
from tests.webrtc.cdp import Browser, chromium_available
from tests.webrtc.harness import Buyer

JSSIP_VERSION = "3.13.8"
ESBUILD_VERSION = "0.28.2"


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    # The switch runs on uvloop (SPEC.md); so do these tests.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def buyer() -> AsyncIterator[Buyer]:
    b = Buyer()
    await b.start()
    yield b
    b.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    reason = chromium_available()
    if reason is not None:
        pytest.skip(reason)
    b = Browser()
    await b.start()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture(scope="session")
def jssip_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JsSIP from npm (pinned), bundled with esbuild into a temp dir; nothing is committed."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm not installed (Debian package npm; .ci/run installs it)")
    build = tmp_path_factory.mktemp("jssip")
    try:
        subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "--prefix",
                str(build),
                f"jssip@{JSSIP_VERSION}",
                f"esbuild@{ESBUILD_VERSION}",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        out = build / f"jssip-{JSSIP_VERSION}.min.js"
        subprocess.run(
            [
                str(build / "node_modules" / ".bin" / "esbuild"),
                str(build / "node_modules" / "jssip" / "lib" / "JsSIP.js"),
                "--bundle",
                "--format=iife",
                "--global-name=JsSIP",
                "--minify",
                f"--outfile={out}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        pytest.fail(f"building the JsSIP bundle failed: {exc}\n{stderr.decode()[-2000:]}")
    return out
