"""A small blocking HTTP/2 client for the tests: the ``h2`` state machine over a real socket.

Its own header checks are off, so a test can send what a hostile client would
(upper-case names, connection fields, wrong lengths); ``send_raw`` sends frames
h2 would never make (CONTINUATION floods).
"""

from __future__ import annotations

import socket
import ssl
import time

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)


class Answer:
    """What came back on one stream."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.interim: list[dict[bytes, bytes]] = []
        self.body = b""
        self.trailers: dict[bytes, bytes] = {}
        self.ended = False
        self.reset: int | None = None  # the RST_STREAM error code, if reset

    @property
    def status(self) -> int:
        return int(self.headers[b":status"])

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2Client:
    def __init__(self, port: int, context: ssl.SSLContext | None = None,
                 name: str = "localhost", timeout: float = 10.0, ack: bool = True,
                 preface: bool = True) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        # Without it, the last small DATA frame of each window waits for a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            context.set_alpn_protocols(["h2"])
            sock = context.wrap_socket(sock, server_hostname=name)
            assert sock.selected_alpn_protocol() == "h2"
        self.sock = sock
        self.authority = name.encode() + b":%d" % port
        self.scheme = b"https" if context is not None else b"http"
        self.ack = ack  # give window back as DATA arrives
        self.conn = H2Connection(H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False))
        self.answers: dict[int, Answer] = {}
        self.terminated: ConnectionTerminated | None = None
        self.closed = False
        if preface:
            self.conn.initiate_connection()
            self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, path: str = "/", method: str = "GET", body: bytes | None = None,
                headers: list[tuple[bytes, bytes]] | None = None, end: bool = True,
                pseudo: list[tuple[bytes, bytes]] | None = None) -> int:
        """Open a stream; ``end`` False leaves it open for ``data``."""
        sid = self.conn.get_next_available_stream_id()
        fields = pseudo if pseudo is not None else [
            (b":method", method.encode()), (b":scheme", self.scheme),
            (b":authority", self.authority), (b":path", path.encode())]
        fields = fields + (headers or [])
        self.answers[sid] = Answer()
        self.conn.send_headers(sid, fields, end_stream=end and body is None)
        self.flush()
        if body is not None:
            self.data(sid, body, end)
        return sid

    def data(self, sid: int, body: bytes, end: bool = True) -> None:
        """Send ``body`` within the server's windows (reading while they are shut)."""
        view = memoryview(body)
        while view:
            if self.answers[sid].done:
                return  # answered (or reset) before all of it went: stop sending
            room = min(self.conn.local_flow_control_window(sid),
                       self.conn.max_outbound_frame_size, len(view))
            if room <= 0:
                self.read_once()
                continue
            self.conn.send_data(sid, view[:room].tobytes())
            view = view[room:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    def read_once(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            raise ConnectionError("server closed the connection")
        for event in self.conn.receive_data(data):
            self._event(event)
        self.flush()

    def _event(self, event) -> None:
        kind = type(event)
        answer = self.answers.get(getattr(event, "stream_id", 0) or 0)
        if kind is ResponseReceived:
            answer.headers = dict(event.headers)
        elif kind is InformationalResponseReceived:
            answer.interim.append(dict(event.headers))
        elif kind is DataReceived:
            answer.body += event.data
            if self.ack and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
        elif kind is TrailersReceived:
            answer.trailers = dict(event.headers)
        elif kind is StreamEnded:
            answer.ended = True
        elif kind is StreamReset:
            if answer is not None:
                answer.reset = event.error_code
        elif kind is ConnectionTerminated:
            self.terminated = event
            if event.error_code == 0:
                # A graceful GOAWAY: streams up to its last id still finish (RFC 9113
                # §6.8), but h2 stops at any GOAWAY; the test client reads on.
                self.conn.state_machine.state = ConnectionState.CLIENT_OPEN

    def until(self, done, timeout: float = 10.0) -> None:
        """Read until ``done()`` (a condition on what arrived) or the deadline."""
        give_up = time.monotonic() + timeout
        while not done():
            if time.monotonic() > give_up:
                raise AssertionError("no answer in time")
            self.sock.settimeout(max(0.05, give_up - time.monotonic()))
            self.read_once()

    def answer(self, sid: int, timeout: float = 10.0) -> Answer:
        self.until(lambda: self.answers[sid].done, timeout)
        return self.answers[sid]

    def get(self, path: str, **kw) -> Answer:
        return self.answer(self.request(path, **kw))

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:  # closing whatever state it is in
            pass
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
