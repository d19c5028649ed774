"""config/settings.py: defaults, TOML keys and DCE_* environment, with errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import ConfigError
from config.settings import load_settings, parse_duration


def test_defaults_follow_the_spec() -> None:
    s = load_settings({}, {})
    assert s.sip_listen == ("127.0.0.1", 5060)
    assert s.http_listen == ("127.0.0.1", 8080)
    assert s.media_ip == "127.0.0.1"
    assert s.rtp_ports == (20000, 29999)
    assert s.auction_timeout == 0.1 and s.ring_timeout == 30 and s.media_timeout == 60
    assert s.max_calls == 5000 and s.media_mode == "relay" and s.data_dir == Path("./var")
    assert s.digest_algorithms == ("SHA-256", "MD5")
    assert s.media_workers == 0  # the relay in the switch process


def test_media_workers() -> None:
    assert load_settings({"media_workers": 2}, {}).media_workers == 2
    assert load_settings({}, {"DCE_MEDIA_WORKERS": "4"}).media_workers == 4


def test_environment_wins_over_the_file() -> None:
    s = load_settings({"sip_listen": "127.0.0.1:5070", "ring_timeout": "10s"},
                      {"DCE_RING_TIMEOUT": "250ms"})
    assert s.sip_listen == ("127.0.0.1", 5070)
    assert s.ring_timeout == 0.25
    assert s.media_ip == "127.0.0.1"  # follows the SIP address


def test_media_ip_defaults_to_the_sip_address() -> None:
    assert load_settings({}, {"DCE_SIP_LISTEN": "127.0.0.5:5060"}).media_ip == "127.0.0.5"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DCE_SIP_LISTEN": "localhost"}, "sip_listen"),
        ({"DCE_HTTP_LISTEN": "1.2.3.4:99999"}, "http_listen"),
        ({"DCE_RTP_PORTS": "30000-20000"}, "rtp_ports"),
        ({"DCE_RING_TIMEOUT": "soon"}, "ring_timeout"),
        ({"DCE_MAX_CALLS": "0"}, "max_calls"),
        ({"DCE_MEDIA_MODE": "proxy"}, "media_mode"),
        ({"DCE_LOG_LEVEL": "loud"}, "log_level"),
        ({"DCE_MEDIA_IP": "media.example"}, "media_ip"),
        ({"DCE_TLS_CERT": "/c.pem"}, "tls_cert"),
        ({"DCE_DIGEST_ALGORITHMS": "SHA-1"}, "digest_algorithms"),
        ({"DCE_MEDIA_WORKERS": "-1"}, "media_workers"),
        ({"DCE_MEDIA_WORKERS": "3", "DCE_RTP_PORTS": "20000-20011"}, "media_workers"),
    ],
    ids=["listen", "port", "rtp-range", "duration", "max-calls", "media-mode", "log-level",
         "media-ip", "tls-half", "digest", "media-workers", "workers-ports"],
)
def test_bad_values_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({}, env)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("text", "seconds"), [("100ms", 0.1), ("30s", 30.0), ("2m", 120.0), ("1.5", 1.5), (3, 3.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text, "k") == seconds


def test_digest_order_is_configurable() -> None:
    assert load_settings({"digest_algorithms": ["md5", "sha-256"]}, {}).digest_algorithms == (
        "MD5", "SHA-256")
