"""``dce dnc import`` says which campaigns use the list, and warns when none does.

A list no campaign names blocks no call: an import under a misspelt name used to do nothing,
silently. The command asks the running switch for the stored campaigns (a real ``dce run``
whose campaign requires the list ``internal``), or, with no switch answering, the database.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration import dce_process
from tests.integration.dce_process import Switch, dce_command
from tests.ports import free_port

pytestmark = pytest.mark.integration

WARNING = ("dce: warning: no campaign uses the DNC list 'intrenal': it blocks no call until a "
           "campaign names it in compliance.dnc_lists")


@pytest.fixture(scope="module")
def sw(switches: Any) -> Switch:
    config = {
        "trunks": [dce_process.ip_trunk()],
        "campaigns": [dce_process.campaign("main", ["+18005550100"],
                                           compliance={"calling_hours": False,
                                                       "dnc_lists": ["internal"]})],
    }
    return switches(config, name="dnccli")


def dnc_import(numbers: Path, name: str, env: dict[str, str],
               *extra: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DCE_")}
    base.update(env)
    return subprocess.run([*dce_command(), "dnc", "import", str(numbers), "--list", name, *extra],
                          env=base, capture_output=True, text=True, timeout=60)


@pytest.fixture
def numbers(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.txt"
    path.write_text("2125551234\n2125550001\n")
    return path


def test_through_the_running_switch(sw: Switch, numbers: Path) -> None:
    env = {"DCE_HTTP_LISTEN": f"{sw.host}:{sw.http_port}", "DCE_ADMIN_TOKEN": "it-admin-token",
           "DCE_DATA_DIR": str(sw.data_dir)}
    used = dnc_import(numbers, "internal", env)
    assert used.returncode == 0, used.stderr
    assert used.stdout.splitlines()[-1] == "used by campaign main", used.stdout
    assert "warning" not in used.stderr, used.stderr
    typo = dnc_import(numbers, "intrenal", env)
    assert typo.returncode == 0, typo.stderr  # imported all the same: nothing is lost
    assert typo.stderr.splitlines()[-1] == WARNING, typo.stderr


def test_without_a_running_switch_the_database_is_read(sw: Switch, numbers: Path) -> None:
    # No switch answers at DCE_HTTP_LISTEN: the command opens the database itself, for the
    # import and for the campaigns.
    env = {"DCE_HTTP_LISTEN": f"127.0.0.1:{free_port()}", "DCE_DATABASE_URL": sw.dsn,
           "DCE_DATA_DIR": str(sw.data_dir)}
    used = dnc_import(numbers, "internal", env, "--merge")
    assert used.returncode == 0, used.stderr
    assert used.stdout.splitlines()[-1] == "used by campaign main", used.stdout
    typo = dnc_import(numbers, "intrenal", env)
    assert typo.returncode == 0, typo.stderr
    assert typo.stderr.splitlines()[-1] == WARNING, typo.stderr
