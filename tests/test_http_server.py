"""The server's HTTP protocol: each answer in one write, bytes in order, nothing held past a
turn of the event loop. Against a real uvicorn server and real loopback transports; the
`Recording` proxy only notes the writes a real transport is asked for and passes them on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import LiveServer

from modelfn.asgi import create_app
from modelfn.http_server import JOIN_BYTES, OneWriteProtocol, PairedWrites
from modelfn.registry import Registry

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"
ROW = [17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871] * 3


class Recording:
    """A real transport, with the calls that write to it noted."""

    def __init__(self, transport: Any, writes: list[bytes]) -> None:
        self.transport, self.writes = transport, writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.writes.append(b"".join(chunks))
        self.transport.writelines(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


WRITES: list[bytes] = []


class RecordingProtocol(OneWriteProtocol):  # type: ignore[misc]
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(Recording(transport, WRITES))


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    app = create_app(Registry.from_dir(FUNCTIONS, ["breast-cancer"]))
    with LiveServer(app, http=RecordingProtocol) as live:
        yield live


def exchange(url: str, requests: list[bytes], until: Callable[[bytes], bool]) -> bytes:
    """Raw requests on one keep-alive connection; what has come back once `until` says so."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        received = b""
        while not until(received):
            chunk = sock.recv(65536)
            assert chunk, f"the server closed the connection after {received!r}"
            received += chunk
    return received


def predict_request(body: bytes) -> bytes:
    return (
        b"POST /functions/breast-cancer HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


def test_each_answer_is_one_write_with_its_headers_and_body(server: LiveServer) -> None:
    body = httpx.post(f"{server.url}/functions/breast-cancer", json={"X": ROW}).content  # the answer, through httpx
    WRITES.clear()
    request = predict_request(b'{"X": %s}' % str(ROW).encode())
    received = exchange(server.url, [request] * 3, until=lambda got: got.count(body) == 3)
    assert received.count(b"HTTP/1.1 200 OK") == 3 and received.count(body) == 3
    assert len(WRITES) == 3  # not six: status line and headers went out with each body
    for write in WRITES:
        assert write.startswith(b"HTTP/1.1 200 OK") and write.endswith(body)


def test_an_answer_without_a_body_is_not_held(server: LiveServer) -> None:
    """HEAD has headers only: nothing pairs with them, they go out on the loop's next turn."""
    WRITES.clear()
    head_request = b"HEAD /v2/health/live HTTP/1.1\r\nhost: test\r\n\r\n"
    received = exchange(server.url, [head_request], until=lambda got: b"\r\n\r\n" in got)
    head = received.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 13" in head
    assert [received] == WRITES


def test_a_large_answer_arrives_whole(server: LiveServer) -> None:
    pytest.importorskip("swagger_ui_bundle", reason="Swagger UI's files come with the server extra")
    WRITES.clear()
    script = httpx.get(f"{server.url}/docs/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > JOIN_BYTES
    assert int(script.headers["content-length"]) == len(script.content)
    assert len(WRITES) == 1 and WRITES[0].endswith(script.content)  # headers and body, one vectored write


def test_paired_writes_keep_the_order_and_hold_nothing_past_a_turn() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], bytes]:
        loop = asyncio.get_running_loop()
        server_side, client_side = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server_side)
        writes: list[bytes] = []
        paired = PairedWrites(Recording(transport, writes), loop)  # type: ignore[arg-type]
        paired.write(b"one ")
        paired.write(bytearray(b"two "))
        paired.write(b"three ")
        held = list(writes)  # "three" waits for a partner
        await asyncio.sleep(0)  # the loop's next turn sends it alone
        paired.writelines([b"four ", b"five"])
        paired.close()  # sends what is held before closing
        client_side.setblocking(False)
        received = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(client_side, 1024), 10):
            received += chunk
        client_side.close()
        return held, writes, received

    held, writes, received = asyncio.run(scenario())
    assert held == [b"one two "]
    assert writes == [b"one two ", b"three ", b"four five"]
    assert received == b"one two three four five"
