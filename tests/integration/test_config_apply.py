"""One source of truth for configuration (issue 11), through real ``dce run`` processes.

* The config file seeds the database at the first start only: a bid, a payout share and a
  deleted endpoint changed through the admin API survive a restart, and the restart says that
  the file differs.
* ``dce config apply FILE`` prints the diff and applies it through the running switch, which
  uses the new bid on its next call; ``--dry-run`` changes nothing.
* Without a running switch ``dce config apply`` and ``dce config export`` open the database
  themselves (here the embedded PostgreSQL, as a fresh install has it).
"""

from __future__ import annotations

import json
import subprocess
import tomllib
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration import dce_process
from tests.integration.db import wait_cdr
from tests.integration.dce_process import Switch, dce_command
from tests.integration.sipp import CALLED, run_uac, start_uas
from tests.ports import free_port

pytestmark = pytest.mark.integration

TOKEN = "it-admin-token"  # what dce_process.Switch gives every switch
PROFILE = "/api/v1/buyers/b1/profiles/p1"


def config(buyer_port: int, bid: str = "12.00", **extra: Any) -> dict[str, Any]:
    return {
        "trunks": [dce_process.ip_trunk()],
        "campaigns": [dce_process.campaign("main", ["+" + CALLED])],
        "buyers": [dce_process.buyer(
            "b1", [f"sip:buyer@127.0.0.1:{buyer_port}", "sip:backup@127.0.0.1:9"],
            profiles=[{"id": "p1", "campaign_id": "main", "bid": bid}])],
        **extra,
    }  # fmt: skip


def api(sw: Switch, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        sw.url + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def dce_config(sw: Switch, *args: str) -> subprocess.CompletedProcess[str]:
    """``dce config ...`` with the switch's settings (its environment), as an operator runs it."""
    return subprocess.run(
        [*dce_command(), "config", *args], env=sw.environment(), cwd=sw.workdir,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def rewrite(sw: Switch, cfg: dict[str, Any]) -> Path:
    sw.config = cfg
    sw.config_path.write_text(dce_process.to_toml(cfg))
    return sw.config_path


def start_output(sw: Switch) -> str:
    assert sw.stdout_path is not None
    return sw.stdout_path.read_text()


def bid(sw: Switch) -> str:
    status, body = api(sw, "GET", PROFILE)
    assert status == 200, body
    return str(body["bid"])


def test_api_changes_survive_a_restart_and_apply_shows_the_diff(
    switches: Any, sipp: str, workdir: Path
) -> None:
    buyer_port = free_port()
    # No OPTIONS probes of the buyer: its SIPp starts only for the last call, and an endpoint
    # marked down before that would not be called (dce/endpoint_health.py).
    sw: Switch = switches(config(buyer_port), name="truth", env={"DCE_PROBE_INTERVAL": "0"})
    assert "differs" not in start_output(sw)  # the first start seeds

    assert api(sw, "PATCH", PROFILE, {"bid": "13.00"})[0] == 200
    assert api(sw, "PATCH", "/api/v1/trunks/it-ip", {"payout_share": "65"})[0] == 200
    assert api(sw, "DELETE", "/api/v1/buyers/b1/endpoints/b1-e2")[0] == 204

    assert sw.stop() == 0
    sw.start()
    assert bid(sw) == "13.00"
    assert api(sw, "GET", "/api/v1/trunks/it-ip")[1]["payout_share"] == "65"
    endpoints = api(sw, "GET", "/api/v1/buyers/b1/endpoints")[1]["items"]
    assert [e["id"] for e in endpoints] == ["b1-e1"]
    line = (f"config: {sw.config_path} differs from the database (1 to add, 2 to change); the "
            f"database is in use. See the diff: dce config apply {sw.config_path} --dry-run")
    assert line in start_output(sw).splitlines(), start_output(sw)
    assert any(d.get("msg") == line and d.get("level") == "warning" for d in sw.logs())

    # The operator edits the file: a new bid. A dry run shows everything, changes nothing.
    path = rewrite(sw, config(buyer_port, bid="14.50"))
    dry = dce_config(sw, "apply", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "~ trunks/it-ip",
        '      payout_share: "65" -> "70"',
        "+ buyers/b1/endpoints/b1-e2  (new)",
        "~ buyers/b1/profiles/p1",
        '      bid: "13.00" -> "14.50"',
        "dry run: 1 to add, 2 to change; nothing was changed",
    ], dry.stdout
    assert bid(sw) == "13.00"

    done = dce_config(sw, "apply", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"applied through the running switch at {sw.url}: 1 added, 2 changed, 0 removed")
    assert bid(sw) == "14.50"
    endpoints = api(sw, "GET", "/api/v1/buyers/b1/endpoints")[1]["items"]
    assert [e["id"] for e in endpoints] == ["b1-e1", "b1-e2"]
    again = dce_config(sw, "apply", str(path))
    assert again.stdout.splitlines() == [f"{path}: nothing to change"], again.stdout

    # The switch routes its next call at the new bid.
    buyer = start_uas(workdir, "uas.xml", buyer_port)
    try:
        caller = run_uac(workdir, "uac.xml", sw.sip_addr, name="uac-new-bid", extra=["-d", "100"])
        served = buyer.wait(15)
    finally:
        buyer.kill()
    assert caller.ok, caller.describe()
    assert served.ok, served.describe()
    cdr = wait_cdr(sw.dsn, caller.call_id)
    assert cdr["buyer_id"] == "b1" and cdr["bid"] == Decimal("14.50"), cdr

    # The file and the database agree now: the next start says nothing.
    assert sw.stop() == 0
    sw.start()
    assert "differs" not in start_output(sw)
    assert bid(sw) == "14.50"


def test_prune_and_secrets_through_the_running_switch(switches: Any) -> None:
    cfg = config(free_port())
    cfg["trunks"].append(dce_process.digest_trunk("seller", "first-password", "it-digest"))
    cfg["buyers"][0]["api_key"] = "bk_first_" + "f" * 24
    sw: Switch = switches(cfg, name="prune")
    assert api(sw, "POST", "/api/v1/trunks", {"id": "api-only", "name": "made by the API"})[0] == 201

    cfg["trunks"][1]["password"] = "second-password"
    cfg["buyers"][0]["api_key"] = "bk_second_" + "s" * 24
    path = rewrite(sw, cfg)
    kept = dce_config(sw, "apply", str(path), "--dry-run")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.splitlines() == [
        "~ trunks/it-digest",
        "      password: changed (secret, not shown)",
        "= trunks/api-only  (only in the database: kept; --prune removes it)",
        "~ buyers/b1",
        "      api_key: changed (secret, not shown)",
        "dry run: 2 to change; 1 only in the database, kept; nothing was changed",
    ], kept.stdout
    for secret in ("first-password", "second-password", "bk_first_", "bk_second_"):
        assert secret not in kept.stdout + kept.stderr

    pruned = dce_config(sw, "apply", str(path), "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "- trunks/api-only  (removed: not in the file)" in pruned.stdout.splitlines()
    assert api(sw, "GET", "/api/v1/trunks/api-only")[0] == 404
    # The new key is the buyer's now.
    req = urllib.request.Request(sw.url + "/api/v1/buyers/b1",
                                 headers={"Authorization": "Bearer bk_second_" + "s" * 24})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200

    exported = dce_config(sw, "export")
    assert exported.returncode == 0, exported.stderr
    assert "second-password" not in exported.stdout and "bk_second_" not in exported.stdout
    doc = tomllib.loads(exported.stdout)
    assert [t["id"] for t in doc["trunks"]] == ["it-digest", "it-ip"]  # stored: by id
    assert "password" not in doc["trunks"][0] and "username" not in doc["trunks"][0]

    # A wrong admin token: refused, nothing changed.
    wrong = subprocess.run(
        [*dce_command(), "config", "apply", str(path), "--prune"],
        env={**sw.environment(), "DCE_ADMIN_TOKEN": "not-the-token"},
        cwd=sw.workdir, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert wrong.returncode == 1
    assert wrong.stderr == f"dce: the switch at {sw.url} refused the admin token\n"

    # A bad file: refused with the field named, exit 2, nothing changed.
    cfg["buyers"][0]["profiles"][0]["campaign_id"] = "no-such-campaign"
    bad = dce_config(sw, "apply", str(rewrite(sw, cfg)))
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "buyers[0].profiles[0].campaign_id" in bad.stderr, bad.stderr
    assert bid(sw) == "12.00"


def test_without_a_running_switch_the_commands_open_the_database(switches: Any) -> None:
    """The embedded PostgreSQL of a stopped switch: apply and export start it themselves."""
    buyer_port = free_port()
    sw: Switch = switches(config(buyer_port), name="offline", embedded=True)
    assert api(sw, "PATCH", PROFILE, {"bid": "13.00"})[0] == 200
    assert sw.stop() == 0

    path = rewrite(sw, config(buyer_port, bid="15.00"))
    dry = dce_config(sw, "apply", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert '      bid: "13.00" -> "15.00"' in dry.stdout.splitlines(), dry.stdout
    done = dce_config(sw, "apply", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        f"applied to the database directly (no switch answered at {sw.url}): "
        "0 added, 1 changed, 0 removed")
    offline = dce_config(sw, "export")
    assert offline.returncode == 0, offline.stderr

    sw.start()
    assert bid(sw) == "15.00"
    assert "differs" not in start_output(sw)
    online = dce_config(sw, "export")
    assert online.stdout == offline.stdout
    assert tomllib.loads(online.stdout)["buyers"][0]["profiles"][0]["bid"] == "15.00"

    # The switch runs but the command is given another HTTP address: it cannot take the
    # embedded database from under the switch, and says so.
    other = subprocess.run(
        [*dce_command(), "config", "apply", str(path)],
        env={**sw.environment(), "DCE_HTTP_LISTEN": f"127.0.0.1:{free_port()}"},
        cwd=sw.workdir, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert other.returncode == 1
    assert "in use by another running DCE process" in other.stderr, other.stderr
