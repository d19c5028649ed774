"""Fixtures for the integration tests: real `dce run` processes, each on a fresh database.

With DCE_TEST_DATABASE_URL set, every switch a test module starts gets its own
``CREATE DATABASE dce_it_<random>`` on that server, dropped when the module ends. Without it,
each switch uses the embedded PostgreSQL under its own temporary DCE_DATA_DIR.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.db import create_database, drop_database
from tests.integration.dce_process import Switch
from tests.integration.sipp import SIPP


@pytest.fixture(scope="session")
def server_url() -> str | None:
    """The PostgreSQL server the tests create their databases on (None: embedded)."""
    return os.environ.get("DCE_TEST_DATABASE_URL") or None


@pytest.fixture(scope="session")
def sipp() -> str:
    if SIPP is None:
        pytest.skip("sipp (Debian package sip-tester) is not installed")
    return SIPP


SwitchFactory = Callable[..., Switch]


@pytest.fixture(scope="module")
def switches(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    server_url: str | None,
) -> Iterator[SwitchFactory]:
    """``make(config, name=..., env=..., embedded=False, start=True) -> Switch``.

    Every switch gets a fresh database (see the module docstring). At the end of the module
    each one still running is stopped with SIGTERM, which must exit 0, and its log must hold no
    error-level traceback; the databases are dropped.
    """
    base = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    made: list[Switch] = []
    databases: list[str] = []
    data_dirs: list[Path] = []

    def make(config: dict[str, Any], *, name: str = "dce", env: dict[str, str] | None = None,
             embedded: bool = False, start: bool = True, database_url: str | None = None,
             **kw: Any) -> Switch:
        if database_url is None and not embedded and server_url is not None:
            database_url = create_database(server_url)
            databases.append(database_url)
        if database_url is None and "data_dir" not in kw:
            # The embedded server runs as an unprivileged user when we are root, and pytest's
            # base temp dir is 0700: give it a data dir whose ancestors it can traverse.
            kw["data_dir"] = Path(tempfile.mkdtemp(prefix=f"dce-it-{name}-"))
            data_dirs.append(kw["data_dir"])
        sw = Switch(base / name, config, database_url=database_url, env=dict(env or {}),
                    name=name, **kw)
        made.append(sw)
        if start:
            sw.start()
        return sw

    yield make

    failures = []
    for sw in made:
        if sw.alive():
            rc = sw.stop()
            if rc != 0:
                failures.append(f"{sw.name}: exit code {rc} after SIGTERM\n{sw.tail()}")
        tracebacks = sw.problems(tracebacks_only=True)
        if tracebacks:
            failures.append(f"{sw.name}: {len(tracebacks)} tracebacks in its log, first:\n"
                            + tracebacks[0])
    if server_url is not None:
        for url in databases:
            drop_database(server_url, url)
    if failures:
        pytest.fail("switch problems at teardown:\n" + "\n\n".join(failures), pytrace=False)
    if os.environ.get("DCE_IT_KEEP") is None:  # DCE_IT_KEEP=1 keeps logs and data dirs
        shutil.rmtree(base, ignore_errors=True)
        for d in data_dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Per-test directory for SIPp logs (kept by pytest's tmp_path retention on failure)."""
    return tmp_path
