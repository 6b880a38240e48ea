"""The HTTP/1.1 protocol `modelfn serve` runs under uvicorn: uvicorn's own, with each answer's
status line and headers going out in one write with its body.

uvicorn writes the headers when the app sends `http.response.start` and the body when it
sends `http.response.body`: two system calls per answer, and on loopback or a fast network
two wake-ups of the client, the first for headers it cannot use yet. `PairedWrites` holds the
first until the second (or until the event loop's next turn, whichever comes first) and
sends them as one. bench/server_throughput.py measures the server with it (see the README)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _UvicornProtocol
except ImportError:  # httptools not installed: uvicorn's pure-Python h11 protocol
    from uvicorn.protocols.http.h11_impl import H11Protocol as _UvicornProtocol  # type: ignore[assignment]

JOIN_BYTES = 64 * 1024
"""A pair up to this size is joined into one buffer; a larger one goes out as a vectored
write of the two, which copies neither."""


class PairedWrites:
    """A transport whose writes go out two at a time: a write is held until the next one,
    which takes it along, or until the event loop's next turn. Nothing waits longer than that
    turn, and the order of the bytes is kept. Everything but writing is the transport's own."""

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)  # a caller may reuse a buffer it handed in
            self._loop.call_soon(self.flush)
        else:
            self._held = None
            if len(held) + len(data) <= JOIN_BYTES:
                self._transport.write(held + data)
            else:
                self._transport.writelines((held, data))

    def writelines(self, chunks: Iterable[bytes]) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        """Send what is held now."""
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteProtocol(_UvicornProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP/1.1 protocol over `PairedWrites` (a class at module level: `--workers`
    hands it to each server process by name)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(PairedWrites(transport, self.loop))  # type: ignore[arg-type]
