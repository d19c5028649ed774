"""Switch settings: defaults, then the TOML file's top-level keys, then DCE_* environment variables.

Keys mirror SPEC.md "Settings": the TOML key is the env var name without ``DCE_``, lower case
(``DCE_SIP_LISTEN`` -> ``sip_listen``). Durations accept ``"250ms"``, ``"30s"``, ``"2m"`` or a
bare number of seconds. Bad values raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from config.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: str | int | float, key: str) -> float:
    """Seconds from ``"100ms"``, ``"30s"``, ``"2m"`` or a number; ConfigError names ``key``."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(value)
        if m is None:
            raise ConfigError(key, f"expected a duration like '30s' or '100ms', got {value!r}")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds < 0:
        raise ConfigError(key, f"duration must not be negative, got {value!r}")
    return seconds


def parse_hostport(value: str, key: str) -> tuple[str, int]:
    """``"127.0.0.1:5060"`` or ``"[::1]:5060"`` -> (host, port)."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"expected HOST:PORT, got {value!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigError(key, f"expected an IP address, got {host!r}") from exc
    return host, int(port)


def parse_port_range(value: str, key: str) -> tuple[int, int]:
    lo, sep, hi = value.partition("-")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise ConfigError(key, f"expected LOW-HIGH, got {value!r}")
    low, high = int(lo), int(hi)
    if not 1024 <= low < high <= 65535:
        raise ConfigError(key, f"expected 1024 <= LOW < HIGH <= 65535, got {value!r}")
    return low, high


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Resolved settings. Times are seconds (float); addresses are (host, port)."""

    sip_listen: tuple[str, int] = ("127.0.0.1", 5060)
    http_listen: tuple[str, int] = ("127.0.0.1", 8080)
    media_ip: str = "127.0.0.1"
    rtp_ports: tuple[int, int] = (20000, 29999)
    database_url: str | None = None
    redis_url: str | None = None
    admin_token: str | None = None
    auction_timeout: float = 0.1
    ring_timeout: float = 30.0
    media_timeout: float = 60.0
    max_calls: int = 5000
    log_level: str = "info"
    data_dir: Path = Path("./var")
    media_mode: str = "relay"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Not in SPEC.md's table: SIP timer T1 (RFC 3261 §17), for tests and lossy links, and the
    # folder of trusted STIR/SHAKEN certificates (PEM), default DCE_DATA_DIR/stir-trust.
    sip_t1: float = 0.5
    stir_trust_dir: Path | None = None
    # Digest algorithms offered in 401 challenges, most preferred first (RFC 8760 §2.4). Some
    # clients (SIPp 3.6) answer only the first challenge and only in MD5: "MD5,SHA-256".
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")


_KEYS = (
    "sip_listen",
    "http_listen",
    "media_ip",
    "rtp_ports",
    "database_url",
    "redis_url",
    "admin_token",
    "auction_timeout",
    "ring_timeout",
    "media_timeout",
    "max_calls",
    "log_level",
    "data_dir",
    "media_mode",
    "tls_cert",
    "tls_key",
    "sip_t1",
    "stir_trust_dir",
    "digest_algorithms",
)
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _coerce(key: str, raw: Any) -> Any:
    if key in ("sip_listen", "http_listen"):
        return parse_hostport(str(raw), key)
    if key == "rtp_ports":
        return parse_port_range(str(raw), key)
    if key in ("auction_timeout", "ring_timeout", "media_timeout", "sip_t1"):
        return parse_duration(raw, key)
    if key == "max_calls":
        try:
            n = int(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(key, f"expected a whole number, got {raw!r}") from exc
        if n < 1:
            raise ConfigError(key, f"must be at least 1, got {n}")
        return n
    if key == "log_level":
        level = str(raw).lower()
        if level not in _LOG_LEVELS:
            raise ConfigError(key, f"expected one of {', '.join(_LOG_LEVELS)}, got {raw!r}")
        return level
    if key == "media_mode":
        mode = str(raw).lower()
        if mode not in ("relay", "bypass"):
            raise ConfigError(key, f"expected relay or bypass, got {raw!r}")
        return mode
    if key == "digest_algorithms":
        items = raw if isinstance(raw, list) else str(raw).split(",")
        algs = tuple(str(a).strip().upper() for a in items if str(a).strip())
        bad = [a for a in algs if a not in ("SHA-256", "MD5")]
        if not algs or bad:
            raise ConfigError(key, f"expected a list of SHA-256 and/or MD5, got {raw!r}")
        return algs
    if key == "media_ip":
        try:
            return str(ipaddress.ip_address(str(raw)))
        except ValueError as exc:
            raise ConfigError(key, f"expected an IP address, got {raw!r}") from exc
    if key in ("data_dir", "tls_cert", "tls_key", "stir_trust_dir"):
        return Path(str(raw))
    if raw == "":
        return None
    return str(raw)


def load_settings(
    file_values: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Resolve settings from the config file's top-level keys and the environment."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for key, raw in (file_values or {}).items():
        if key not in _KEYS:
            continue
        values[key] = _coerce(key, raw)
    for key in _KEYS:
        raw = env.get("DCE_" + key.upper())
        if raw is not None:
            values[key] = _coerce(key, raw)
    if "media_ip" not in values:
        # SPEC: DCE_MEDIA_IP defaults to the SIP listen address (unless that is a wildcard).
        host = values.get("sip_listen", Settings().sip_listen)[0]
        values["media_ip"] = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ("tls_cert" in values) != ("tls_key" in values):
        raise ConfigError("tls_cert", "DCE_TLS_CERT and DCE_TLS_KEY must be set together")
    return Settings(**values)


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML file as a dict; ConfigError with the file name when it does not parse."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError("config", f"{path}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path}: {exc}") from exc
