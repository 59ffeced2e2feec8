"""WebSocket: tunnelled both ways after a 101; no tunnel when the upstream refuses."""

from __future__ import annotations

import base64
import hashlib
import select
import socket
import struct
import threading

import pytest
import websocket
from conftest import read_reply, recv_head

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


def frame(opcode: int, payload: bytes) -> bytes:
    """A server frame: final, unmasked (RFC 6455 §5.2)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return header + payload


def read_frame(f) -> tuple[int, bytes]:
    first, second = f.read(2)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", f.read(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", f.read(8))[0]
    mask = f.read(4) if second & 0x80 else b"\0\0\0\0"
    data = f.read(size)
    key = int.from_bytes((mask * (size // 4 + 1))[:size], "big")
    return first & 0x0F, (int.from_bytes(data, "big") ^ key).to_bytes(size, "big")


def ws_echo(sock: socket.socket) -> None:
    """A tiny RFC 6455 echo server: handshake, then every data frame back."""
    head = recv_head(sock)
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                 + frame(1, b"welcome"))
    f = sock.makefile("rb")
    while True:
        opcode, payload = read_frame(f)
        if opcode == 8:  # close: answer it and hang up
            sock.sendall(frame(8, payload))
            return
        sock.sendall(frame(opcode, payload))


class Refuser:
    """Answers an upgrade request with 403 and records whatever else arrives."""

    def __init__(self) -> None:
        self.extra = b""
        self.done = threading.Event()

    def __call__(self, sock: socket.socket) -> None:
        recv_head(sock)
        sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nConnection: close\r\n\r\n"
                     b"no way")
        sock.shutdown(socket.SHUT_WR)
        while data := sock.recv(65536):
            self.extra += data
        self.done.set()


@pytest.fixture(scope="module")
def site(rex_module, upstream_module):
    echo = upstream_module.raw(ws_echo)
    refuser = Refuser()
    refusing = upstream_module.raw(refuser)
    port = rex_module.serve({"/*": echo.url, "/refuse": refusing.url}, """\
        timeouts: {read: 0.5, idle: 0.5}
        logging: {access: off}
        workers: 1
    """)
    return port, refuser


def test_websocket_round_trip_both_ways(site):
    port, _ = site
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/hmr", timeout=5)
    try:
        assert ws.recv() == "welcome"  # upstream → client, unprompted
        ws.send("hello")
        assert ws.recv() == "hello"
        blob = bytes(range(256)) * 1024  # 256 KiB: many reads on each side
        ws.send_binary(blob)
        assert ws.recv() == blob
        # Quiet for longer than timeouts.read and timeouts.idle: a tunnel has neither,
        # so nothing (no close) may arrive meanwhile.
        assert select.select([ws.sock], [], [], 0.8) == ([], [], [])
        ws.send("still there")
        assert ws.recv() == "still there"
    finally:
        ws.close()


def test_refused_upgrade_opens_no_tunnel(site):
    port, refuser = site
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /refuse HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
                  b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                  b"\x81\x85early")  # a frame sent before the answer: never forwarded
        f = s.makefile("rb")
        reply = read_reply(f)
        assert reply.status == 403 and reply.body == b"no way"
        assert f.read() == b""  # and the connection ends with the response
    assert refuser.done.wait(5)
    assert refuser.extra == b""


def test_refused_upgrade_seen_by_a_websocket_client(site):
    port, _ = site
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(f"ws://127.0.0.1:{port}/refuse", timeout=5)
    assert info.value.status_code == 403
