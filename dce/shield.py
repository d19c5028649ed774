"""What guards the transports, assembled from the settings: rate limits, bans, connection caps.

:class:`Shield` builds the :class:`~switch.transport.Guard` every transport consults: the
per-source rate limiter (switch/pike.py, DCE_PIKE_*), which sources are trusted (trunk
addresses, buyer endpoints and trusted proxies, from dce/admit.py, plus sources that proved a
password), whom a trusted proxy's messages count against (the caller it names,
switch/proxy.py), which connections carry a live call (never closed as idle), and the
connection caps of TCP and WebSocket (DCE_*_MAX_CONNECTIONS, DCE_MAX_CONNECTIONS_PER_SOURCE,
DCE_CONNECTION_IDLE_TIMEOUT).

switch/pike.py decides; the transports drop a banned source's packets after one dict lookup.
:class:`BanKeeper` runs the pike's one timer (bans end, a window's counts are freed) and, when
``DCE_PIKE_NFT_SET`` names an nftables set, adds every new ban to it with the ban's timeout,
so that the kernel drops those packets before they wake the process at all. The ``nft``
command runs as a subprocess, never on the event loop: one at a time, the bans that start
meanwhile going into the next one. A failure (no ``nft``, no such set, no permission) is
logged, at most once a minute, and counted; the ban still holds inside the process.

The one-time nftables rules that create the set are in docs/settings.md (DCE_PIKE_NFT_SET).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from config.settings import Settings
from dce.admit import TrunkAdmitter
from switch.core import SwitchCore
from switch.peer import Peer
from switch.pike import Ban, Pike, PikeConfig
from switch.transport import ConnLimits, Guard

logger = logging.getLogger(__name__)

NFT_TIMEOUT = 5.0  # seconds one `nft` run may take
_ERROR_LOG_EVERY = 60.0


@dataclass(slots=True)
class NftStats:
    pushed: int = 0  # addresses added to a kernel set
    errors: int = 0  # nft runs that failed


def parse_set(text: str, key: str) -> tuple[str, str, str]:
    """``"inet dce banned4"`` -> (family, table, set); ValueError naming ``key`` otherwise."""
    parts = text.split()
    families = ("ip", "ip6", "inet", "netdev", "bridge")
    if len(parts) != 3 or parts[0] not in families:
        raise ValueError(f"{key}: expected 'FAMILY TABLE SET' (e.g. 'inet dce banned4'), "
                         f"got {text!r}")
    return parts[0], parts[1], parts[2]


def nft_script(bans: Sequence[Ban], set4: tuple[str, str, str] | None,
               set6: tuple[str, str, str] | None) -> str:
    """The ``nft -f -`` input adding ``bans`` to the sets, one ``add element`` per set.

    Timeouts are whole seconds, rounded up; a host that is not an IP address is skipped.
    """
    elements: dict[tuple[str, str, str], list[str]] = {}
    for ban in bans:
        try:
            address = ipaddress.ip_address(ban.host.partition("%")[0])
        except ValueError:
            continue
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        target = set4 if address.version == 4 else set6
        if target is None:
            continue
        seconds = max(1, math.ceil(ban.seconds))
        elements.setdefault(target, []).append(f"{address} timeout {seconds}s")
    lines = [
        f"add element {family} {table} {name} {{ {', '.join(items)} }}"
        for (family, table, name), items in elements.items()
    ]
    return "".join(line + "\n" for line in lines)


class BanKeeper:
    """Arms the pike's timer and mirrors its bans into nftables sets (module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pike: Pike,
        *,
        nft_set: str | None = None,
        nft_set6: str | None = None,
        nft: Sequence[str] = ("nft",),
    ) -> None:
        self.loop = loop
        self.pike = pike
        self.stats = NftStats()
        self._set4 = parse_set(nft_set, "pike_nft_set") if nft_set else None
        self._set6 = parse_set(nft_set6, "pike_nft_set6") if nft_set6 else None
        # The command, e.g. ("ip", "netns", "exec", NAME, "nft") in a test's namespace.
        self._nft = (shutil.which(nft[0]) or nft[0], *nft[1:])
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pushing: asyncio.Task[None] | None = None
        self._last_error_log = -math.inf

    @property
    def kernel(self) -> bool:
        """Whether bans go to the kernel too."""
        return self._set4 is not None or self._set6 is not None

    def banned(self, host: str) -> None:
        """A transport's count just banned ``host`` (Guard.on_ban)."""
        self._after_change()

    def ban(self, host: str, seconds: float | None = None, reason: str = "") -> bool:
        """Ban ``host`` on another module's word; False for a trusted source."""
        if not self.pike.ban(host, self.loop.time(), seconds, reason):
            return False
        self._after_change()
        return True

    def trust(self, host: str, now: float) -> None:
        """A source proved a password (TrunkAdmitter.proven)."""
        self.pike.trust(host, now)
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pushing is not None and not self._pushing.done():
            self._pushing.cancel()

    # ----------------------------------------------------------------- internal

    def _after_change(self) -> None:
        self._arm()
        if not self.kernel:
            self.pike.bans_to_push()  # nobody to mirror them to: do not keep them
            return
        if self._pushing is None or self._pushing.done():
            self._pushing = self.loop.create_task(self._push())

    def _arm(self) -> None:
        when = self.pike.get_timer()
        if when is None:
            return
        if self._timer_at is None or when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.pike.handle_timer(self.loop.time())
        self._arm()

    async def _push(self) -> None:
        while bans := self.pike.bans_to_push():
            script = nft_script(bans, self._set4, self._set6)
            if not script:
                continue
            ok, detail = await self._run(script)
            if ok:
                self.stats.pushed += script.count(" timeout ")
                logger.info("bans pushed to nftables", extra={"hosts": [b.host for b in bans]})
            else:
                self.stats.errors += 1
                now = self.loop.time()
                if now - self._last_error_log >= _ERROR_LOG_EVERY:
                    self._last_error_log = now
                    logger.warning("nft failed; bans hold in the process only",
                                   extra={"reason": detail})

    async def _run(self, script: str) -> tuple[bool, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._nft, "-f", "-",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            return False, f"{self._nft[0]}: {exc}"
        try:
            _, err = await asyncio.wait_for(proc.communicate(script.encode()), NFT_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False, f"nft took more than {NFT_TIMEOUT:g}s"
        if proc.returncode != 0:
            return False, err.decode("utf-8", "replace").strip()[:300]
        return True, ""


class Shield:
    """The transports' guard and limits, from the settings (module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: Settings,
        admitter: TrunkAdmitter,
        core: SwitchCore,
    ) -> None:
        self.core = core
        self.pike: Pike | None = None
        self.bans: BanKeeper | None = None
        self.guard = Guard(trusted=admitter.trusted, busy=self.busy)
        if admitter.proxies:
            # Behind a trusted proxy, limits and bans count the callers it names (never it).
            self.guard.identity = admitter.proxies.identity
        if settings.pike_limit:
            self.pike = Pike(
                PikeConfig(window=settings.pike_window, limit=settings.pike_limit,
                           ban=settings.pike_ban),
                trusted=admitter.trusted,
            )
            self.bans = BanKeeper(loop, self.pike, nft_set=settings.pike_nft_set,
                                  nft_set6=settings.pike_nft_set6)
            self.guard.pike = self.pike
            self.guard.on_ban = self.bans.banned
            admitter.proven = self.bans.trust
        per_source = settings.max_connections_per_source
        idle = settings.connection_idle_timeout
        self.tcp_limits = ConnLimits(max_connections=settings.tcp_max_connections,
                                     max_per_source=per_source, idle_timeout=idle)
        self.ws_limits = ConnLimits(max_connections=settings.ws_max_connections,
                                    max_per_source=per_source, idle_timeout=idle)

    def busy(self) -> set[object]:
        """The connections that carry a live call: the caller's (by connection id) and the
        buyer's we opened (by address), for every leg of every live call."""
        busy: set[object] = set()

        def add(peer: Peer | None) -> None:
            if peer is not None:
                busy.add(peer.conn or (peer.host, peer.port))

        for call in self.core.calls.values():
            add(call.a_peer)
            if call.a_dialog is not None:
                add(call.a_dialog.peer)
            attempt = call.attempt
            if attempt is not None:
                add(attempt.peer)
                if attempt.dialog is not None:
                    add(attempt.dialog.peer)
        return busy

    def close(self) -> None:
        if self.bans is not None:
            self.bans.close()
