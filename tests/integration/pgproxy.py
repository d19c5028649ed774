"""A TCP proxy in front of PostgreSQL that a test can cut and restore (a database outage)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from pathlib import Path
from typing import Any

from tests.ports import free_port


class PgProxy:
    """Forwards ``127.0.0.1:port`` to an upstream TCP address, in its own thread and loop.

    ``cut()`` closes the listener and every proxied connection (the database "goes away":
    connects are refused, open connections reset); ``restore()`` listens again on the same port.
    """

    def __init__(self, upstream: tuple[str, int] | Path) -> None:
        self.upstream = upstream  # (host, port), or the path of a Unix socket
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    def __enter__(self) -> PgProxy:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the proxy's loop (its thread) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    _run = run

    def restore(self) -> None:
        async def go() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                      reuse_address=True)
        self._run(go())

    def cut(self) -> None:
        async def go() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for w in list(self._writers):
                with contextlib.suppress(Exception):
                    w.transport.abort()
            self._writers.clear()
        self._run(go())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if isinstance(self.upstream, Path):
                up_reader, up_writer = await asyncio.open_unix_connection(str(self.upstream))
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


def upstream_of(url: str) -> tuple[str, int]:
    m = re.match(r"^postgres(?:ql)?://(?:[^@/]*@)?([^:/?]+)(?::(\d+))?", url)
    if m is None:
        raise ValueError(f"cannot find host:port in {url!r}")
    return m.group(1), int(m.group(2) or 5432)


def via_port(url: str, port: int) -> str:
    """``url`` pointing at 127.0.0.1:``port`` instead of its own host and port."""
    return re.sub(r"^(postgres(?:ql)?://(?:[^@/]*@)?)[^/?]*", rf"\g<1>127.0.0.1:{port}", url)
