"""Switch settings: defaults, then the TOML file's top-level keys, then DCE_* environment variables.

Every setting is documented in docs/settings.md. The TOML key is the env var name without
``DCE_``, lower case (``DCE_SIP_LISTEN`` -> ``sip_listen``). Durations accept ``"250ms"``,
``"30s"``, ``"2m"`` or a bare number of seconds. Bad values raise :class:`ConfigError`
naming the key.

Adding a setting is one field on :class:`Settings` (its default's type picks the parser) plus,
only when the type does not say enough, one entry in ``_PARSERS``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
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


_HOSTNAME = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def parse_advertise(value: str, key: str) -> tuple[str, int] | None:
    """``"203.0.113.7"``, ``"sip.example.com:5080"``, ``"[2001:db8::7]:5060"`` or a bare
    IPv6 address -> (host, port), port 0 when not given; None for ``""`` (unset)."""
    text = value.strip()
    if not text:
        return None
    port = ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(key, f"expected HOST, HOST:PORT or [IPv6]:PORT, got {value!r}")
        port = rest[1:] if rest else ""
        if rest and not port:
            raise ConfigError(key, f"expected a port after ':', got {value!r}")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port:
            raise ConfigError(key, f"expected a port after ':', got {value!r}")
    else:
        host = text  # a name, an IPv4 address or a bare IPv6 address
    if port and (not port.isdigit() or not 1 <= int(port) <= 65535):
        raise ConfigError(key, f"expected a port from 1 to 65535, got {value!r}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if ":" in host or not _HOSTNAME.match(host) or host.replace(".", "").isdigit():
            message = f"expected an IP address or a host name, got {value!r}"
            raise ConfigError(key, message) from None
        return host.lower(), int(port or 0)
    if address.is_unspecified:
        raise ConfigError(key, f"a wildcard address cannot be reached; got {value!r}")
    return str(address), int(port or 0)


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
    # The address written in SIP (Via, Contact, From): (host, port), port 0 for the listen
    # port. None: the listen address, or with a wildcard listen the primary interface's
    # address, found at start (dce/addresses.py).
    sip_advertise: tuple[str, int] | None = None
    http_listen: tuple[str, int] = ("127.0.0.1", 8080)
    # SDP's address and where RTP sockets bind. A wildcard (the default with a wildcard
    # sip_listen) means the primary interface's address, found at start.
    media_ip: str = "127.0.0.1"
    rtp_ports: tuple[int, int] = (20000, 29999)
    database_url: str | None = None
    redis_url: str | None = None
    admin_token: str | None = None
    # Key of the hashes that replace erased callers (hex, 16+ bytes); default: a random one
    # made in DCE_DATA_DIR/erasure_secret. Instances sharing a database need the same one.
    erasure_secret: str | None = None
    auction_timeout: float = 0.1
    ring_timeout: float = 30.0
    # No response at all from a buyer endpoint (not even 100 Trying) within this: fail over.
    trying_timeout: float = 2.0
    # Buyer endpoint health (dce/endpoint_health.py): an OPTIONS to every active endpoint each
    # probe_interval (0: no probing), given up after probe_timeout; down after
    # probe_down_after failures in a row, up again after probe_up_after answers in a row.
    probe_interval: float = 10.0
    probe_timeout: float = 2.0
    probe_down_after: int = 2
    probe_up_after: int = 2
    media_timeout: float = 60.0
    # RTP relay processes (media/workers.py), each pinned to a core with its own share of
    # rtp_ports; 0: the relay runs in the switch process itself.
    media_workers: int = 0
    max_calls: int = 5000
    log_level: str = "info"
    # Logs: json (one object per line) or text (for a person at a terminal); caller and called
    # numbers in the per-call line masked to their last 4 digits, or full (docs/operations.md).
    log_format: str = "json"
    log_numbers: str = "masked"
    data_dir: Path = Path("./var")
    media_mode: str = "relay"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # SIP timer T1 (RFC 3261 §17), for tests and lossy links, and the folder of trusted
    # STIR/SHAKEN certificates (PEM), default DCE_DATA_DIR/stir-trust.
    sip_t1: float = 0.5
    stir_trust_dir: Path | None = None
    # Digest algorithms offered in 401 challenges, most preferred first (RFC 8760 §2.4). Some
    # clients (SIPp 3.6) answer only the first challenge and only in MD5: "MD5,SHA-256".
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    # Password guessing (docs/sip.md): this many failed digest authentications within the
    # window block the source (or, from sources it never succeeded from, the user name) for
    # auth_block_time. 0 turns that block off. Defaults: fail2ban's 5 in 10 minutes, 10 minutes.
    auth_fail_limit: int = 5
    auth_user_fail_limit: int = 10
    auth_fail_window: float = 600.0
    auth_block_time: float = 600.0
    # How often the call journal (crash recovery) is fsynced: what a power loss can lose.
    journal_sync: float = 0.1
    # Overload control (dce/load.py): new INVITEs are refused with 503 so that requests wait
    # in the SIP socket's kernel queue about overload_delay at most (0 turns it off); an
    # event-loop lag above overload_lag, or a CPU share of one core above overload_cpu (0 or
    # 1: no such limit), counts as overload too.
    overload_delay: float = 0.05
    overload_lag: float = 0.05
    overload_cpu: float = 1.0
    # Per-source rate limits (switch/pike.py, like Kamailio's pike): more than pike_limit
    # messages in one pike_window bans the source for pike_ban (0: no limit). Trunk and buyer
    # addresses are never banned. pike_nft_set(6) names an nftables set bans are copied to.
    pike_window: float = 2.0
    pike_limit: int = 100
    pike_ban: float = 60.0
    pike_nft_set: str | None = None
    pike_nft_set6: str | None = None
    # Stream connections (TCP, WebSocket) from untrusted sources, in all and per address
    # (Kamailio's tcp_max_connections is 2048), and the idle timeout of every connection
    # without a live call (above RFC 5626's 120 s keep-alive). 0 turns a limit off.
    tcp_max_connections: int = 2048
    ws_max_connections: int = 2048
    max_connections_per_source: int = 32
    connection_idle_timeout: float = 180.0
    # SIP proxies in front of the switch (Kamailio's dispatcher, docs/cluster.md): IPs or
    # networks whose requests name their real source in X-DCE-Source (switch/proxy.py).
    trusted_proxies: tuple[str, ...] = ()


_KEYS: tuple[str, ...] = Settings.__struct_fields__
_LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_int(value: Any, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a whole number, got {value!r}")
    try:
        n = int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, f"expected a whole number, got {value!r}") from exc
    if n < minimum:
        raise ConfigError(key, f"must be at least {minimum}, got {n}")
    return n


def parse_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, f"expected true or false, got {value!r}")


def _choice(*allowed: str) -> Callable[[Any, str], str]:
    def parse(value: Any, key: str) -> str:
        text = str(value).lower()
        if text not in allowed:
            raise ConfigError(key, f"expected one of {', '.join(allowed)}, got {value!r}")
        return text

    return parse


def _digest_algorithms(raw: Any, key: str) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    algs = tuple(str(a).strip().upper() for a in items if str(a).strip())
    bad = [a for a in algs if a not in ("SHA-256", "MD5")]
    if not algs or bad:
        raise ConfigError(key, f"expected a list of SHA-256 and/or MD5, got {raw!r}")
    return algs


def _positive_duration(raw: Any, key: str) -> float:
    seconds = parse_duration(raw, key)
    if seconds <= 0:
        raise ConfigError(key, f"must be more than 0, got {raw!r}")
    return seconds


def _ip(raw: Any, key: str) -> str:
    try:
        return str(ipaddress.ip_address(str(raw)))
    except ValueError as exc:
        raise ConfigError(key, f"expected an IP address, got {raw!r}") from exc


def _fraction(raw: Any, key: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, f"expected a number from 0 to 1, got {raw!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise ConfigError(key, f"expected a number from 0 to 1, got {raw!r}")
    return value


def _networks(raw: Any, key: str) -> tuple[str, ...]:
    """IP addresses or networks, as a TOML list or comma-separated (``"10.0.0.5, 10.1.0.0/24"``)."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    out = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            out.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError as exc:
            raise ConfigError(key, f"expected IP addresses or networks, got {text!r}") from exc
    return tuple(out)


def _hex_secret(raw: Any, key: str) -> str | None:
    """A secret given as hex, at least 16 bytes (32 hex digits); None for ""."""
    text = str(raw).strip().lower()
    if not text:
        return None
    try:
        size = len(bytes.fromhex(text))
    except ValueError as exc:
        raise ConfigError(key, "expected hex digits (e.g. from `openssl rand -hex 32`)") from exc
    if size < 16:
        raise ConfigError(key, f"expected at least 16 bytes (32 hex digits), got {size}")
    return text


def _nft_set(raw: Any, key: str) -> str | None:
    """``"FAMILY TABLE SET"`` (an nftables set), or None for ""."""
    text = " ".join(str(raw).split())
    if not text:
        return None
    parts = text.split(" ")
    if len(parts) != 3 or parts[0] not in ("ip", "ip6", "inet", "netdev", "bridge"):
        raise ConfigError(key, f"expected 'FAMILY TABLE SET' (e.g. 'inet dce banned4'), "
                               f"got {raw!r}")
    return text


# Settings whose parser is not implied by their default's type. Others: an int default takes
# a whole number >= 0, a float default a duration, a bool default true/false, a Path default
# (or a name ending in _dir/_file) a path, anything else a string ("" means unset).
_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "sip_listen": lambda raw, key: parse_hostport(str(raw), key),
    "http_listen": lambda raw, key: parse_hostport(str(raw), key),
    "rtp_ports": lambda raw, key: parse_port_range(str(raw), key),
    "max_calls": lambda raw, key: parse_int(raw, key, minimum=1),
    "log_level": _choice(*_LOG_LEVELS),
    "log_format": _choice("json", "text"),
    "log_numbers": _choice("masked", "full"),
    "media_mode": _choice("relay", "bypass"),
    "digest_algorithms": _digest_algorithms,
    "sip_advertise": lambda raw, key: parse_advertise(str(raw), key),
    "media_ip": lambda raw, key: _ip(raw, key) if str(raw).strip() else None,
    "tls_cert": lambda raw, key: Path(str(raw)),
    "tls_key": lambda raw, key: Path(str(raw)),
    "stir_trust_dir": lambda raw, key: Path(str(raw)),
    "erasure_secret": _hex_secret,
    "auth_fail_window": _positive_duration,
    "probe_timeout": _positive_duration,
    "probe_down_after": lambda raw, key: parse_int(raw, key, minimum=1),
    "probe_up_after": lambda raw, key: parse_int(raw, key, minimum=1),
    "auth_block_time": _positive_duration,
    "pike_window": _positive_duration,
    "pike_ban": _positive_duration,
    "pike_nft_set": lambda raw, key: _nft_set(raw, key),
    "pike_nft_set6": lambda raw, key: _nft_set(raw, key),
    "trusted_proxies": _networks,
    "overload_cpu": _fraction,
}
_DEFAULTS = Settings()


def _coerce(key: str, raw: Any) -> Any:
    parser = _PARSERS.get(key)
    if parser is not None:
        return parser(raw, key)
    default = getattr(_DEFAULTS, key)
    if isinstance(default, bool):
        return parse_bool(raw, key)
    if isinstance(default, int):
        return parse_int(raw, key)
    if isinstance(default, float):
        return parse_duration(raw, key)
    if isinstance(default, Path):
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
    if values.get("media_ip") is None:
        # DCE_MEDIA_IP (unset or "") defaults to the SIP listen address; a wildcard stands
        # for the primary interface's address, found at start (dce/addresses.py).
        values["media_ip"] = values.get("sip_listen", Settings().sip_listen)[0]
    if values.get("sip_advertise", 0) is None:
        del values["sip_advertise"]  # "" is unset
    workers = values.get("media_workers", 0)
    low, high = values.get("rtp_ports", _DEFAULTS.rtp_ports)
    if workers and len(range(low + (low & 1), high, 2)) < 2 * workers + 1:
        # media/workers.py split_ports: two pairs (one call) per worker, one for WebRTC.
        raise ConfigError("media_workers", f"DCE_RTP_PORTS {low}-{high} is too small for "
                                           f"{workers} media workers")
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
