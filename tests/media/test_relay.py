"""Relay logic without sockets (media/relay.py): latching, RTP Bleed, counters, media timeout.

Time is a plain float; nothing sleeps.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from media import sdp
from media.relay import CallRelay, Leg, RelayConfig, Stream
from media.sdp import LegOrigin, MediaEndpoint
from store.cdr import Cdr

DATA = Path(__file__).parent / "data"
PRIVATE_SWITCH = "10.0.0.1"
PUBLIC_SWITCH = "93.184.216.34"
A_IP, B_IP = "10.0.0.20", "10.0.0.30"
A_PUBLIC, B_PUBLIC, ATTACKER = "151.101.1.69", "151.101.65.69", "45.33.32.156"


def pkt(seq: int = 1, pt: int = 0, size: int = 172) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * 160, 99) + bytes(size - 12)


def rtcp(packet_type: int = 200) -> bytes:
    return struct.pack("!BBHI", 0x80, packet_type, 6, 99) + bytes(20)


def ep(
    ip: str, port: int, direction: str = "sendrecv", rtcp_port: int | None = None
) -> MediaEndpoint:
    return MediaEndpoint(ip, port, rtcp_port if rtcp_port is not None else port + 1, direction)


def make(media_ip: str = PRIVATE_SWITCH, **config: float | bool) -> CallRelay:
    return CallRelay(media_ip, 40000, 40002, RelayConfig(**config))  # type: ignore[arg-type]


def connected(now: float = 0.0) -> CallRelay:
    """A call with both legs announced (private network, strict latching) and answered."""
    relay = make()
    relay.set_remote(Leg.A, ep(A_IP, 4000), now)
    relay.set_remote(Leg.B, ep(B_IP, 6000), now)
    relay.answered(now)
    return relay


def a_rtp(relay: CallRelay) -> Stream:
    return relay.stream(Leg.A)


def b_rtp(relay: CallRelay) -> Stream:
    return relay.stream(Leg.B)


# -------------------------------------------------------------------------------- forwarding


def test_forward_both_ways_to_announced_then_latched() -> None:
    relay = connected()
    # Before B has sent anything, A's packets go to where B's SDP said.
    assert a_rtp(relay).receive(pkt(1), (A_IP, 4000), 0.1) == (B_IP, 6000)
    # B is behind a NAT that moved its port: latch onto where its packets come from.
    assert b_rtp(relay).receive(pkt(1), (B_IP, 61000), 0.1) == (A_IP, 4000)
    assert a_rtp(relay).receive(pkt(2), (A_IP, 4000), 0.12) == (B_IP, 61000)
    assert b_rtp(relay).latched == (B_IP, 61000)


def test_rtcp_socket_forwards_to_rtcp_destination() -> None:
    relay = connected()
    a_rtcp, b_rtcp = relay.stream(Leg.A, rtcp=True), relay.stream(Leg.B, rtcp=True)
    assert a_rtcp.receive(rtcp(200), (A_IP, 4001), 1.0) == (B_IP, 6001)
    assert b_rtcp.receive(rtcp(201), (B_IP, 6001), 1.0) == (A_IP, 4001)
    stats = relay.stats()
    assert stats.a_to_b.rtcp_packets == 1 and stats.b_to_a.rtcp_packets == 1
    assert a_rtp(relay).seq.received == 0  # RTCP never touches RTP sequence accounting


def test_rtcp_mux_on_rtp_port_counts_as_rtcp() -> None:
    relay = connected()
    assert a_rtp(relay).receive(rtcp(200), (A_IP, 4000), 1.0) == (B_IP, 6000)
    assert a_rtp(relay).rtcp_packets == 1 and a_rtp(relay).seq.received == 0


def test_telephone_event_passes() -> None:
    relay = connected()
    assert a_rtp(relay).receive(pkt(5, pt=101, size=16), (A_IP, 4000), 1.0) == (B_IP, 6000)


MALFORMED = {
    "empty": b"",
    "short": b"\x80\x00\x00",
    "version 1": b"\x40" + bytes(171),
    "version 0 (STUN)": b"\x00\x01\x00\x00" + bytes(16),
    "DTLS": b"\x16\xfe\xfd" + bytes(40),
    "RTP shorter than 12": b"\x80\x00\x00\x01" + bytes(6),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_is_dropped_and_counted(data: bytes) -> None:
    relay = connected()
    assert a_rtp(relay).receive(data, (A_IP, 4000), 1.0) is None
    assert a_rtp(relay).malformed == 1 and a_rtp(relay).packets == 0
    # Garbage never latches, even from the announced IP.
    assert a_rtp(relay).latched is None


def test_garbage_from_announced_ip_does_not_latch_rtcp_either() -> None:
    relay = connected()
    a_rtcp = relay.stream(Leg.A, rtcp=True)
    assert a_rtcp.receive(b"\x00" * 20, (A_IP, 4444), 1.0) is None
    assert a_rtcp.latched is None and a_rtcp.malformed == 1


def test_unroutable_until_other_leg_known() -> None:
    relay = make()
    relay.set_remote(Leg.A, ep(A_IP, 4000), 0.0)
    assert a_rtp(relay).receive(pkt(1), (A_IP, 4000), 0.1) is None
    assert a_rtp(relay).unroutable == 1
    relay.set_remote(Leg.B, ep(B_IP, 6000), 0.2)
    assert a_rtp(relay).receive(pkt(2), (A_IP, 4000), 0.3) == (B_IP, 6000)


def test_nothing_accepted_before_any_sdp() -> None:
    relay = make()
    assert b_rtp(relay).receive(pkt(1), (B_IP, 6000), 0.0) is None
    assert b_rtp(relay).foreign == 1


# -------------------------------------------------------------------------------- latching


def test_other_ip_is_never_learnt() -> None:
    relay = connected()
    stream = a_rtp(relay)
    for t in (0.0, 10.0, 100.0):  # not before, not after latching, not after long silence
        assert stream.receive(pkt(1), (ATTACKER, 4000), t) is None
        if t == 0.0:
            assert stream.receive(pkt(2), (A_IP, 4000), 0.01)
    assert stream.foreign == 3 and stream.latched == (A_IP, 4000)


def test_rtp_bleed_no_relatch_while_source_alive() -> None:
    relay = connected()
    stream = a_rtp(relay)
    assert stream.receive(pkt(1), (A_IP, 4000), 1.00)
    # Another port on the same IP (a guessing attacker behind the same CGNAT) mid-call.
    assert stream.receive(pkt(2), (A_IP, 5555), 1.01) is None
    assert stream.receive(pkt(3), (A_IP, 4000), 1.02)
    assert stream.receive(pkt(4), (A_IP, 5555), 2.50) is None  # 1.48 s after last: still live
    assert stream.latched == (A_IP, 4000) and stream.foreign == 2


def test_relatch_on_same_ip_after_silence() -> None:
    relay = connected()
    stream = a_rtp(relay)
    assert stream.receive(pkt(1), (A_IP, 4000), 1.0)
    # NAT binding expired during a long silence; the phone's packets now use a new port.
    assert stream.receive(pkt(2), (A_IP, 4100), 3.0)
    assert stream.latched == (A_IP, 4100)
    assert b_rtp(relay).receive(pkt(1), (B_IP, 6000), 3.1) == (A_IP, 4100)
    assert stream.receive(pkt(3), (A_IP, 4000), 3.2) is None  # the old port lost its place


def test_nat_first_source_learning_within_window() -> None:
    relay = make(PUBLIC_SWITCH, learn_window=5.0)
    relay.set_remote(Leg.A, ep("192.168.1.20", 4000), 0.0)  # private address behind NAT
    relay.set_remote(Leg.B, ep(B_PUBLIC, 6000), 0.0)
    stream = a_rtp(relay)
    assert stream.dest is None  # 192.168.1.20 is unreachable from a public switch
    assert stream.receive(pkt(1), (A_PUBLIC, 33000), 2.0) == (B_PUBLIC, 6000)
    assert stream.latched == (A_PUBLIC, 33000)
    # From now on the IP is fixed: someone else is foreign...
    assert stream.receive(pkt(2), (ATTACKER, 33000), 2.1) is None
    # ... and B's packets go to A's NAT address.
    assert b_rtp(relay).receive(pkt(1), (B_PUBLIC, 6000), 2.2) == (A_PUBLIC, 33000)


def test_nat_learning_window_closes() -> None:
    relay = make(PUBLIC_SWITCH, learn_window=5.0)
    relay.set_remote(Leg.A, ep("192.168.1.20", 4000), 0.0)
    assert a_rtp(relay).receive(pkt(1), (A_PUBLIC, 33000), 5.5) is None
    assert a_rtp(relay).foreign == 1 and a_rtp(relay).latched is None
    # The answer re-opens the window (phones start sending at 200 OK, the INVITE may ring long).
    relay.set_remote(Leg.B, ep(B_PUBLIC, 6000), 30.0)
    relay.answered(30.0)
    assert a_rtp(relay).receive(pkt(2), (A_PUBLIC, 33000), 31.0) == (B_PUBLIC, 6000)


def test_nat_signal_ip_pins_the_source() -> None:
    relay = make(PUBLIC_SWITCH)
    relay.set_remote(Leg.A, ep("192.168.1.20", 4000), 0.0, signal_ip=A_PUBLIC)
    relay.set_remote(Leg.B, ep(B_PUBLIC, 6000), 0.0)
    stream = a_rtp(relay)
    assert stream.receive(pkt(1), (ATTACKER, 1234), 0.1) is None  # even inside the window
    assert stream.receive(pkt(2), (A_PUBLIC, 33000), 0.2) == (B_PUBLIC, 6000)


def test_reinvite_to_new_address_relearns_only_from_it() -> None:
    relay = connected()
    stream = a_rtp(relay)
    assert stream.receive(pkt(1), (A_IP, 4000), 1.0)
    relay.set_remote(Leg.A, ep("10.0.0.21", 4500), 2.0)  # media moved (transfer, new device)
    assert stream.dest == ("10.0.0.21", 4500)
    assert stream.receive(pkt(2), (A_IP, 4000), 2.1) is None
    assert stream.receive(pkt(3), ("10.0.0.21", 4500), 2.2)
    assert b_rtp(relay).receive(pkt(1), (B_IP, 6000), 2.3) == ("10.0.0.21", 4500)


def test_reinvite_same_address_keeps_latch() -> None:
    relay = connected()
    stream = a_rtp(relay)
    assert stream.receive(pkt(1), (A_IP, 33333), 1.0)  # NAT'ed port
    relay.set_remote(Leg.A, ep(A_IP, 4000), 2.0)  # session refresh, same SDP
    assert stream.latched == (A_IP, 33333) and stream.dest == (A_IP, 33333)


def test_reinvite_new_port_same_ip_relearns() -> None:
    relay = connected()
    stream = a_rtp(relay)
    assert stream.receive(pkt(1), (A_IP, 4000), 1.0)
    relay.set_remote(Leg.A, ep(A_IP, 4100), 2.0)
    assert stream.latched is None and stream.dest == (A_IP, 4100)
    assert stream.receive(pkt(2), (A_IP, 4100), 2.1)


def test_address_hold_keeps_latch_and_exempts_timeout() -> None:
    relay = connected()
    assert a_rtp(relay).receive(pkt(1), (A_IP, 33333), 1.0)
    relay.set_remote(Leg.A, ep("0.0.0.0", 4000, "sendonly"), 2.0)  # media_endpoints' mapping
    assert a_rtp(relay).latched == (A_IP, 33333)
    assert relay.held and not relay.media_timeout_due(1000.0, 60.0)
    relay.set_remote(Leg.A, ep(A_IP, 4000), 1001.0)  # resume
    assert not relay.held
    assert a_rtp(relay).latched == (A_IP, 33333)
    assert not relay.media_timeout_due(1060.0, 60.0)
    assert relay.media_timeout_due(1061.0, 60.0)


def test_failover_resets_leg_b() -> None:
    relay = connected()
    assert b_rtp(relay).receive(pkt(1), (B_IP, 6000), 1.0)
    relay.reset_leg(Leg.B)
    assert b_rtp(relay).receive(pkt(2), (B_IP, 6000), 1.1) is None  # old buyer: gone
    assert a_rtp(relay).receive(pkt(1), (A_IP, 4000), 1.2) is None  # nowhere to send
    relay.set_remote(Leg.B, ep("10.0.0.40", 7000), 2.0)
    assert a_rtp(relay).receive(pkt(2), (A_IP, 4000), 2.1) == ("10.0.0.40", 7000)


def test_disabled_stream_accepts_nothing() -> None:
    relay = connected()
    relay.set_remote(Leg.B, None, 1.0)  # answer rejected audio (port 0)
    assert b_rtp(relay).receive(pkt(1), (B_IP, 6000), 1.1) is None
    assert a_rtp(relay).receive(pkt(1), (A_IP, 4000), 1.1) is None
    assert relay.held  # nothing expected: no media timeout
    assert relay.timeout_at(60.0) is None


# -------------------------------------------------------------------------------- timeout


def test_no_timeout_before_answer() -> None:
    relay = make()
    relay.set_remote(Leg.A, ep(A_IP, 4000), 0.0)
    relay.set_remote(Leg.B, ep(B_IP, 6000), 0.0)
    assert not relay.media_timeout_due(1000.0, 60.0)
    assert relay.timeout_at(60.0) is None


def test_silent_leg_times_out_from_answer() -> None:
    relay = connected(now=10.0)
    assert relay.timeout_at(60.0) == 70.0
    for i in range(1, 200):  # B talks for 20 s every 0.1 s; A never sends
        b_rtp(relay).receive(pkt(i), (B_IP, 6000), 10.0 + i * 0.1)
    assert not relay.media_timeout_due(69.9, 60.0)
    assert relay.media_timeout_due(70.0, 60.0)


def test_both_talking_never_times_out() -> None:
    relay = connected()
    t = 0.0
    for i in range(1, 2000):
        t = i * 0.1
        a_rtp(relay).receive(pkt(i), (A_IP, 4000), t)
        b_rtp(relay).receive(pkt(i), (B_IP, 6000), t)
    assert not relay.media_timeout_due(t + 59.0, 60.0)
    assert relay.media_timeout_due(t + 60.0, 60.0)


def test_timeout_requires_both_mode() -> None:
    relay = make(timeout_requires_both=True)
    relay.set_remote(Leg.A, ep(A_IP, 4000), 0.0)
    relay.set_remote(Leg.B, ep(B_IP, 6000), 0.0)
    relay.answered(0.0)
    b_rtp(relay).receive(pkt(1), (B_IP, 6000), 50.0)
    assert not relay.media_timeout_due(100.0, 60.0)
    assert relay.media_timeout_due(110.0, 60.0)


def test_rtcp_alone_does_not_keep_a_call_alive() -> None:
    relay = connected()
    for t in range(1, 100, 5):
        relay.stream(Leg.A, rtcp=True).receive(rtcp(), (A_IP, 4001), float(t))
        relay.stream(Leg.B, rtcp=True).receive(rtcp(), (B_IP, 6001), float(t))
    assert relay.media_timeout_due(60.0, 60.0)


@pytest.mark.parametrize("direction", ["sendonly", "recvonly", "inactive"])
def test_hold_directions_are_exempt(direction: str) -> None:
    relay = connected()
    relay.set_remote(Leg.B, ep(B_IP, 6000, direction), 5.0)
    assert relay.held and not relay.media_timeout_due(10_000.0, 60.0)


def test_sdp_change_restarts_the_timeout_clock() -> None:
    relay = connected()
    relay.set_remote(Leg.A, ep(A_IP, 4000), 50.0)  # re-INVITE at 50 s
    assert relay.timeout_at(60.0) == 110.0


# -------------------------------------------------------------------------------- counters


def test_counters_and_loss_per_direction() -> None:
    relay = connected()
    for seq in range(100):
        if seq % 10 != 3:  # 10 % lost upstream of the switch
            a_rtp(relay).receive(pkt(seq), (A_IP, 4000), seq * 0.02)
    for seq in range(50):
        b_rtp(relay).receive(pkt(seq, size=100), (B_IP, 6000), seq * 0.02)
    a_rtp(relay).receive(b"junk", (A_IP, 4000), 3.0)
    a_rtp(relay).receive(pkt(101), (ATTACKER, 4000), 3.0)
    relay.stream(Leg.A, rtcp=True).receive(rtcp(), (A_IP, 4001), 3.0)
    stats = relay.stats()
    assert stats.a_to_b.packets == 91 and stats.a_to_b.bytes == 90 * 172 + 28
    assert stats.a_to_b.lost == 10  # 3, 13, ..., 93
    assert (stats.a_to_b.malformed, stats.a_to_b.foreign, stats.a_to_b.dropped) == (1, 1, 2)
    assert (stats.b_to_a.packets, stats.b_to_a.bytes, stats.b_to_a.lost) == (50, 5000, 0)
    fields = stats.cdr_fields()
    assert fields == {
        "packets_a_to_b": 91,
        "packets_b_to_a": 50,
        "bytes_a_to_b": 90 * 172 + 28,
        "bytes_b_to_a": 5000,
        "packets_dropped": 2,
    }
    assert set(fields) <= set(Cdr.__struct_fields__)  # the CDR columns exist


# -------------------------------------------------------------------------------- anchor


def test_anchor_offer_and_answer() -> None:
    rng = random.Random(5)
    origin_a, origin_b = LegOrigin.create(rng), LegOrigin.create(rng)
    relay = CallRelay("127.0.0.1", 40000, 40002)
    offer = sdp.parse((DATA / "baresip_offer.sdp").read_bytes())
    to_b = sdp.parse(relay.anchor(Leg.A, offer, 0.0, origin_b, signal_ip="127.0.0.1"))
    assert sdp.media_endpoints(to_b)[0] == MediaEndpoint("127.0.0.1", 40002, 40003, "sendrecv")
    assert to_b.media[0].rtpmap() == offer.media[0].rtpmap()
    assert a_rtp(relay).dest == ("127.0.0.1", 31000)
    answer = sdp.parse((DATA / "sipp_answer.sdp").read_bytes())
    to_a = sdp.parse(relay.anchor(Leg.B, answer, 0.5, origin_a))
    assert sdp.media_endpoints(to_a)[0] == MediaEndpoint("127.0.0.1", 40000, 40001, "sendrecv")
    assert b_rtp(relay).dest == ("127.0.0.1", 6000)
    assert relay.index == 0
    assert to_a.origin.sess_id == str(origin_a.sess_id)


def test_anchor_disables_extra_streams_and_tracks_rejection() -> None:
    relay = CallRelay(PRIVATE_SWITCH, 40000, 40002)
    rng = random.Random(5)
    offer = sdp.parse(
        b"v=0\r\no=- 1 1 IN IP4 10.0.0.20\r\ns=-\r\nc=IN IP4 10.0.0.20\r\nt=0 0\r\n"
        b"m=video 5000 RTP/AVP 96\r\nm=audio 4000 RTP/AVP 0 101\r\n"
    )
    to_b = sdp.parse(relay.anchor(Leg.A, offer, 0.0, LegOrigin.create(rng)))
    assert [m.port for m in to_b.media] == [0, 40002]
    assert relay.index == 1
    # The buyer rejects audio (port 0): no stream to relay, nothing to time out.
    answer = sdp.parse(
        b"v=0\r\no=- 1 1 IN IP4 10.0.0.30\r\ns=-\r\nc=IN IP4 10.0.0.30\r\nt=0 0\r\n"
        b"m=video 0 RTP/AVP 96\r\nm=audio 0 RTP/AVP 0\r\n"
    )
    to_a = sdp.parse(relay.anchor(Leg.B, answer, 0.1, LegOrigin.create(rng)))
    assert [m.port for m in to_a.media] == [0, 0]
    relay.answered(0.2)
    assert relay.held and relay.timeout_at(60.0) is None


def test_reinvite_reanchors_on_the_same_ports_and_bumps_version() -> None:
    rng = random.Random(9)
    origin_a, origin_b = LegOrigin.create(rng), LegOrigin.create(rng)
    relay = CallRelay("127.0.0.1", 40000, 40002)
    offer = (DATA / "baresip_offer.sdp").read_bytes()
    first = sdp.parse(relay.anchor(Leg.A, sdp.parse(offer), 0.0, origin_b))
    relay.anchor(Leg.B, sdp.parse((DATA / "sipp_answer.sdp").read_bytes()), 0.1, origin_a)
    relay.answered(0.2)
    # Caller puts the buyer on hold: re-INVITE with a=sendonly.
    hold = sdp.parse(offer.replace(b"a=sendrecv", b"a=sendonly"))
    held = sdp.parse(relay.anchor(Leg.A, hold, 10.0, origin_b))
    assert held.media[0].port == 40002 and held.media[0].direction == "sendonly"
    assert held.origin.sess_id == first.origin.sess_id
    assert int(held.origin.sess_version) == int(first.origin.sess_version) + 1
    assert relay.held and not relay.media_timeout_due(1000.0, 60.0)
    # Resume: sendrecv again, version +1 again, same ports, timeout armed from the resume.
    resumed = sdp.parse(relay.anchor(Leg.A, sdp.parse(offer), 20.0, origin_b))
    assert resumed.media[0].port == 40002
    assert int(resumed.origin.sess_version) == int(first.origin.sess_version) + 2
    assert not relay.held and relay.timeout_at(60.0) == 80.0


def test_the_announced_address_takes_over_from_another_port_that_spoke_first() -> None:
    """RTP Bleed before the first packet: a neighbour port on the caller's IP sends first."""
    relay = CallRelay("127.0.0.1", 40000, 40002)
    a_rtp = relay.stream(Leg.A)
    a_rtp.announce("127.0.0.2", ("127.0.0.2", 20000))
    pkt = bytes([0x80, 0]) + bytes(10) + b"payload"
    assert a_rtp.receive(pkt, ("127.0.0.2", 40000), 0.0) is None or a_rtp.latched == (
        "127.0.0.2",
        40000,
    )
    a_rtp.receive(pkt, ("127.0.0.2", 20000), 0.1)  # the announced peer speaks: it wins
    assert a_rtp.latched == ("127.0.0.2", 20000)
    a_rtp.receive(pkt, ("127.0.0.2", 40000), 0.2)  # and the neighbour cannot take it back
    assert a_rtp.latched == ("127.0.0.2", 20000)
