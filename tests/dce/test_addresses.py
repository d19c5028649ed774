"""What the switch advertises in SIP and SDP (dce/addresses.py), from its settings."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from config.errors import ConfigError
from config.settings import Settings, load_settings
from dce.addresses import advertised, primary_address, sip_host


def settings(**env: str) -> Settings:
    return load_settings({}, {f"DCE_{k.upper()}": v for k, v in env.items()})


def fake_primary(found: dict[int, str]) -> Callable[[int], str | None]:
    return lambda family: found.get(family)


V4 = {socket.AF_INET: "198.51.100.7"}
BOTH = {socket.AF_INET: "198.51.100.7", socket.AF_INET6: "2001:db8::7"}


def test_a_concrete_listen_address_is_advertised_as_it_is() -> None:
    a = advertised(settings(sip_listen="127.0.0.5:5070"), fake_primary(V4))
    assert (a.sip_host, a.sip_port, a.media_ip, a.notes) == ("127.0.0.5", 5070, "127.0.0.5", [])


def test_a_wildcard_listen_advertises_the_primary_address_and_says_so() -> None:
    a = advertised(settings(sip_listen="0.0.0.0:5060"), fake_primary(V4))
    assert (a.sip_host, a.sip_port, a.media_ip) == ("198.51.100.7", 5060, "198.51.100.7")
    assert a.notes == [
        "SIP  advertised as 198.51.100.7:5060: the primary interface's address (listening on "
        "0.0.0.0); DCE_SIP_ADVERTISE sets it",
        "RTP  on 198.51.100.7 (SDP c=): the primary interface's address (media address "
        "0.0.0.0); DCE_MEDIA_IP sets it",
    ]


def test_an_ipv6_wildcard_prefers_ipv6_and_brackets_it() -> None:
    a = advertised(settings(sip_listen="[::]:5060"), fake_primary(BOTH))
    assert (a.sip_host, a.media_ip) == ("[2001:db8::7]", "2001:db8::7")
    a = advertised(settings(sip_listen="[::]:5060"), fake_primary(V4))
    assert a.sip_host == "198.51.100.7"  # a dual-stack socket takes IPv4 too


def test_no_route_at_all_falls_back_to_the_loopback_and_says_why() -> None:
    a = advertised(settings(sip_listen="0.0.0.0:5060"), fake_primary({}))
    assert (a.sip_host, a.media_ip) == ("127.0.0.1", "127.0.0.1")
    assert "no route to a public address" in a.notes[0]


def test_the_settings_win_over_any_guess() -> None:
    s = settings(sip_listen="0.0.0.0:5060", sip_advertise="sip.example.com",
                 media_ip="203.0.113.9")
    a = advertised(s, fake_primary(V4))
    assert (a.sip_host, a.sip_port, a.media_ip) == ("sip.example.com", 5060, "203.0.113.9")
    assert a.notes == ["SIP  advertised as sip.example.com:5060 (DCE_SIP_ADVERTISE)"]
    a = advertised(settings(sip_advertise="2001:db8::1"))
    assert (a.sip_host, a.sip_port) == ("[2001:db8::1]", 5060)
    a = advertised(settings(sip_advertise="[2001:db8::1]:5099"))
    assert (a.sip_host, a.sip_port) == ("[2001:db8::1]", 5099)


def test_an_empty_setting_means_unset() -> None:
    s = settings(sip_listen="0.0.0.0:5060", sip_advertise="", media_ip="")
    a = advertised(s, fake_primary(V4))
    assert (a.sip_host, a.media_ip) == ("198.51.100.7", "198.51.100.7")


@pytest.mark.parametrize(
    "value",
    ["0.0.0.0", "[::]", "a b", "1.2.3", "host:", "host:0", "host:70000", "[::1]x", "-bad.com",
     "[::1]:", "under_score.example"],
)
def test_bad_advertise_values_name_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match="sip_advertise"):
        settings(sip_advertise=value)


def test_the_real_primary_address_is_one_of_this_hosts() -> None:
    found = primary_address(socket.AF_INET)
    if found is None:
        pytest.skip("this host has no IPv4 route to a public address")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((found, 0))  # only an address of this host can be bound
    assert found != "0.0.0.0"


def test_sip_host_brackets_ipv6_only() -> None:
    assert sip_host("::1") == "[::1]" and sip_host("[::1]") == "[::1]"
    assert sip_host("192.0.2.1") == "192.0.2.1" and sip_host("sip.example.com") == "sip.example.com"
