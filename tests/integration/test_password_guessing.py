"""Password guessing against a digest trunk through a real ``dce run`` (issue 12).

2,000 wrong guesses from one source over UDP: the first five are checked and answered 403,
then the source is blocked and at most one guess in ten gets any answer; the right password is
refused during the block and accepted after it. Every failure is one log line that the
fail2ban filter documented in docs/sip.md matches. An unknown user name and a wrong password
get the same 403.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.dce.test_admit import fail2ban_failregex
from tests.integration import dce_process
from tests.integration.db import wait_cdr
from tests.integration.dce_process import Switch
from tests.integration.sipp import CALLED, start_uas
from tests.integration.sipwire import DigestUac, SipMessage, SipSocket
from tests.ports import free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "seller1", "s3cret-Pass"
GUESSES, LIMIT, BLOCK = 2000, 5, 8.0
GUESSER = "127.0.0.2"


@pytest.fixture(scope="module")
def buyer_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def sw(switches: Any, buyer_port: int, sipp: str) -> Switch:
    config = {
        "trunks": [dce_process.digest_trunk(USER, PASSWORD)],
        "campaigns": [dce_process.campaign("main", ["+" + CALLED])],
        "buyers": [dce_process.buyer("b1", [f"sip:buyer@127.0.0.1:{buyer_port}"])],
    }
    # The per-source rate limit (pike) would ban a sender this fast on its own: off, so the
    # password guard alone is what is measured.
    env = {"DCE_AUTH_FAIL_LIMIT": str(LIMIT), "DCE_AUTH_FAIL_WINDOW": "60s",
           "DCE_AUTH_BLOCK_TIME": f"{BLOCK}s", "DCE_AUTH_USER_FAIL_LIMIT": "100",
           "DCE_PIKE_LIMIT": "0", "DCE_PROBE_INTERVAL": "0"}  # the buyer starts late
    return switches(config, name="guessing", env=env)  # type: ignore[no-any-return]


def metric(sw: Switch, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", sw.metrics(), re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def reason_text(msg: SipMessage | None) -> str | None:
    m = re.search(r'text="([^"]+)"', (msg.header("Reason") or "") if msg else "")
    return m.group(1) if m else None


def raw_log_lines(sw: Switch) -> list[str]:
    return [line for path in sorted(sw.workdir.glob(f"{sw.name}.*.stderr.jsonl"))
            for line in path.read_text(errors="replace").splitlines()]


def test_unknown_user_and_wrong_password_get_the_same_answer(sw: Switch) -> None:
    finals = []
    with SipSocket(("127.0.0.1", sw.sip_port), local_ip="127.0.0.3") as s:
        for user, password in (("nobody", "x"), (USER, "wrong")):
            out = DigestUac(s, user, password, "SHA-256").call(timeout=3.0)
            assert out.challenge is not None and out.final is not None, out
            finals.append((out.final.status, out.final.header("Reason")))
    assert finals[0] == finals[1] == (403, 'SIP;cause=403;text="auth_failed"'), finals


def test_guesses_are_blocked_and_the_right_password_waits_for_the_block(
    sw: Switch, buyer_port: int, workdir: Path
) -> None:
    failures0 = metric(sw, "dce_auth_failures_total")
    with SipSocket(("127.0.0.1", sw.sip_port), local_ip=GUESSER) as s:
        # One challenge; its nonce stays fresh for 300 s, so every guess can reuse it.
        probe = DigestUac(s, USER, "-", "SHA-256")
        s.send(probe._invite(1, None, "z9hG4bKprobe"))
        challenge, _ = s.recv_final(3.0)
        assert challenge is not None and challenge.status == 401, challenge
        s.send(probe._ack(probe.uri, challenge.header("To") or "", 1, "z9hG4bKprobe"))
        guesses = []
        for i in range(GUESSES):
            uac = DigestUac(s, USER, f"guess-{i}", "SHA-256")
            uac.call_id = f"guess-{i:04d}-{uac.call_id}"
            guesses.append(uac.call_id)
            s.send(uac._invite(1, uac.authorization(challenge), f"z9hG4bKg{i:04d}"))
            if i % 20 == 19:
                time.sleep(0.02)  # ~1,000 a second: the switch's socket buffer never overflows
        answers: dict[str, SipMessage] = {}
        deadline = time.monotonic() + 1.0  # answers leave at once; later ones are retransmits
        while (left := deadline - time.monotonic()) > 0 and (msg := s.recv(left)) is not None:
            answers.setdefault(msg.header("Call-ID") or "", msg)
    with SipSocket(("127.0.0.1", sw.sip_port), local_ip=GUESSER) as s:  # no stray 403s here
        during = DigestUac(s, USER, PASSWORD, "SHA-256").call(timeout=1.0)
    answered = [i for i, cid in enumerate(guesses) if cid in answers]
    before, after = answered[:LIMIT], answered[LIMIT:]
    assert before == list(range(LIMIT)), answered[:20]
    assert all(reason_text(answers[guesses[i]]) == "auth_failed" for i in before)
    # Of the guesses after the threshold, at most one in ten got any answer: a constant 403.
    assert len(after) <= (GUESSES - LIMIT) // 10, len(after)
    assert all(answers[guesses[i]].status == 403 for i in after)
    assert all(reason_text(answers[guesses[i]]) == "blocked" for i in after)
    # Every guess reached the switch: checked (a failure) or refused unchecked (a block).
    failures = metric(sw, "dce_auth_failures_total") - failures0
    refused = metric(sw, "dce_auth_refused_total")
    assert failures + refused >= GUESSES, (failures, refused)
    assert metric(sw, "dce_auth_source_blocks_total") >= 1
    # The right password during the block: dropped, or a constant 403; never challenged.
    assert during.challenge is None, during
    assert during.final is None or reason_text(during.final) == "blocked", during

    # Poll until the switch challenges this source again (polling is free: a refused try is
    # not a failure), then call with the right password.
    deadline = time.monotonic() + BLOCK + 10
    while True:
        with SipSocket(("127.0.0.1", sw.sip_port), local_ip=GUESSER) as s:
            probe = DigestUac(s, USER, PASSWORD, "SHA-256")
            s.send(probe._invite(1, None, "z9hG4bKpoll" + probe.from_tag))
            first, _ = s.recv_final(1.0)
            if first is not None and first.status == 401:
                unblocked_at = time.time()
                s.send(probe._ack(probe.uri, first.header("To") or "", 1,
                                  "z9hG4bKpoll" + probe.from_tag))
                break
        assert first is None or reason_text(first) == "blocked", first
        assert time.monotonic() < deadline, "still blocked long after the block time"
    buyer = start_uas(workdir, "uas.xml", buyer_port)
    try:
        with SipSocket(("127.0.0.1", sw.sip_port), local_ip=GUESSER) as s:
            uac = DigestUac(s, USER, PASSWORD, "SHA-256")
            out = uac.call(timeout=8.0)
        assert out.final is not None and out.final.status == 200, out
        done = buyer.wait(15)
    finally:
        buyer.kill()
    assert done.ok, done.describe()
    assert out.bye_response is not None and out.bye_response.status == 200
    cdr = wait_cdr(sw.dsn, uac.call_id)
    assert (cdr["trunk_id"], cdr["disposition"]) == ("it-digest", "answered"), cdr

    # One log line per failure, of the documented shape; the block logged once per block.
    lines = raw_log_lines(sw)
    failed = [ln for ln in lines if "sip auth failed source=" + GUESSER in ln]
    assert len(failed) == failures, (len(failed), failures)
    assert '"msg":"sip auth failed source=127.0.0.2 user=seller1 realm=dce ' \
           'reason=wrong_response"' in failed[0]
    regex = fail2ban_failregex()
    assert all((m := regex.search(ln)) and m.group("host") == GUESSER for ln in failed)
    blocks = [json.loads(ln) for ln in lines if f"sip auth blocked source={GUESSER} " in ln]
    assert len(blocks) == metric(sw, "dce_auth_source_blocks_total")
    # ... and the source was let back in only once the last block had expired.
    last_block = datetime.fromisoformat(blocks[-1]["ts"]).timestamp()
    assert unblocked_at >= last_block + BLOCK - 0.05, (unblocked_at, last_block)
