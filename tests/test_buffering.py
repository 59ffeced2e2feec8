"""Buffering shields an upstream that serves one request at a time from slow clients (issue 15).

The upstream here is what gunicorn's sync workers are: one thread that accepts a
connection, reads one request, answers it and closes, then takes the next. Behind
Rex, another client's request must be answered at once while a slow uploader or
a slow reader is in flight, and the slow ones must still get byte-exact results
when they resume. One master for the module, one worker, ``timeouts.read: 1`` and
``limits.min_rate: 1k`` so that trickles are cut within seconds, and small memory
budgets so that 200 slow readers go to disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from conftest import (
    RawUpstream,
    connection_owner,
    free_port,
    read_head,
    read_reply,
    recv_head,
    rss_kb,
    send_request,
    wait_for,
)

MB = 1 << 20
BIG = 8 * MB
HELD = 64 * MB  # far more than every socket buffer between the upstream and a stalled client


def payload(size: int) -> bytes:
    """A body every byte of which is checked: a pattern that never lines up with a read size."""
    pattern = bytes(range(251)) * (size // 251 + 1)
    return pattern[:size]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class OneAtATime:
    """A gunicorn sync worker's shape: one thread, one request per connection, in turn.

    GET /small, /big[?noaccel|?events][&size=N], POST /upload (echoes size and hash, and
    how the body was framed). ``served`` counts answered requests.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.served = 0
        self.bodies: dict[int, bytes] = {}
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    self._one(conn)
                except OSError:
                    pass  # the proxy hung up: take the next connection
            self.served += 1

    def _one(self, conn: socket.socket) -> None:
        head = recv_head(conn).decode("latin-1")
        target = head.split(" ", 2)[1]
        fields = {k.strip().lower(): v.strip() for k, _, v in
                  (line.partition(":") for line in head.split("\r\n")[1:] if line)}
        path, _, query = target.partition("?")
        if path.endswith("/upload"):
            body = self._body(conn, fields)
            answer = json.dumps({"size": len(body), "sha256": digest(body),
                                 "content-length": fields.get("content-length"),
                                 "transfer-encoding": fields.get("transfer-encoding"),
                                 "expect": fields.get("expect")}).encode()
            extra = b"Content-Type: application/json\r\n"
        elif path.endswith("/big"):
            options = dict(p.partition("=")[::2] for p in query.split("&") if p)
            answer = self.big(int(options.get("size", BIG)))
            extra = b"Content-Type: application/octet-stream\r\n"
            if "noaccel" in options:
                extra += b"X-Accel-Buffering: no\r\n"
            if "events" in options:
                extra = b"Content-Type: text/event-stream\r\n"
            if "chunked" in options:  # in chunks of 100,000 bytes, then a trailer
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + extra + b"Transfer-Encoding: chunked\r\n"
                             b"Connection: close\r\n\r\n")
                for i in range(0, len(answer), 100_000):
                    piece = answer[i:i + 100_000]
                    conn.sendall(b"%x\r\n%b\r\n" % (len(piece), piece))
                conn.sendall(b"0\r\nX-Sum: %s\r\n\r\n" % digest(answer).encode())
                return
        else:
            answer, extra = b"ok", b""
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + extra
                     + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(answer))
        conn.sendall(answer)

    def big(self, size: int) -> bytes:
        if size not in self.bodies:
            self.bodies[size] = payload(size)
        return self.bodies[size]

    @staticmethod
    def _body(conn: socket.socket, fields: dict) -> bytes:
        f = conn.makefile("rb")
        if fields.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(f.readline().split(b";")[0], 16):
                body += f.read(size)
                f.read(2)
            while f.readline() not in (b"\r\n", b""):
                pass  # trailers
            return body
        return f.read(int(fields.get("content-length") or 0))

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def site(rex_module, tmp_path_factory):
    spool_dir = tmp_path_factory.mktemp("spool")
    up = OneAtATime()
    admin = free_port()
    port = rex_module.serve(f"""\
        - {{path: /, destination: "{up.url}"}}
        - {{path: /unbuffered, destination: "{up.url}", buffer_responses: false}}
        - {{path: /streamed, destination: "{up.url}", buffer_requests: false}}
    """, f"""\
        timeouts: {{header: 2, read: 1, idle: 60}}
        limits: {{min_rate: 1k}}
        buffering: {{temp_dir: "{spool_dir}", memory: 64k, worker_memory: 8m}}
        admin: {{port: {admin}}}
        logging: {{access: off}}
        workers: 1
    """)
    yield port, up, rex_module, spool_dir, admin
    up.close()


def quick_get(port: int, path: str = "/small", timeout: float = 1.0) -> float:
    """Seconds a GET took; raises TimeoutError when it took longer than ``timeout``."""
    started = time.monotonic()
    reply = send_request(port, b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                         % path.encode(), timeout=timeout)
    assert reply.status == 200 and reply.body == b"ok"
    return time.monotonic() - started


@contextmanager
def slow_reader(port: int, path: str) -> Iterator[tuple[socket.socket, object, bytes]]:
    """A client that asks for ``path``, reads the head, then stops reading; closed after."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode())
        head = read_head(f)
        assert head.startswith(b"HTTP/1.1 200 ")
        yield s, f, head
    finally:
        f.close()
        s.close()


def resume(f, head: bytes) -> bytes:
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return f.read(length)


# -- the two scenarios of the issue ------------------------------------------------------------


def test_a_slow_uploader_does_not_hold_the_upstream(site):
    port, _up, _rex, _dir, _admin = site
    body = payload(1000)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as a:
        a.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + body[:10])
        time.sleep(0)  # the head and ten bytes are on their way; the rest pauses
        assert quick_get(port) < 1.0  # answered at once: the upstream never heard of A
        a.sendall(body[10:])
        reply = read_reply(a.makefile("rb"))
    seen = json.loads(reply.body)
    assert reply.status == 200 and seen["size"] == 1000 and seen["sha256"] == digest(body)


def test_a_slow_reader_does_not_hold_the_upstream(site):
    port, up, _rex, _dir, _admin = site
    with slow_reader(port, "/big") as (_a, f, head):
        assert quick_get(port) < 1.0  # the upstream handed its 8 MiB over and moved on
        got = resume(f, head)
    assert len(got) == BIG and digest(got) == digest(up.big(BIG))


def test_a_chunked_response_is_read_ahead_with_its_trailers(site):
    port, up, _rex, _dir, _admin = site
    with slow_reader(port, "/big?chunked") as (_a, f, head):
        assert b"transfer-encoding: chunked" in head.lower()
        assert quick_get(port) < 1.0
        parts = []
        while size := int(f.readline(), 16):
            parts.append(f.read(size))
            f.read(2)
        trailers = f.readline()
        assert f.readline() == b"\r\n"
    got = b"".join(parts)
    assert len(got) == BIG and digest(got) == digest(up.big(BIG))
    assert trailers == b"X-Sum: %s\r\n" % digest(got).encode()


def keep_alive_upstream(served: list, written: list):
    """A raw upstream that keeps its connection: 8 MiB for /big, "ok" for anything else."""
    def handle(sock: socket.socket) -> None:
        while True:
            try:
                head = recv_head(sock)
            except ConnectionError:
                return  # the pool let the connection go
            served.append(head.split(b" ", 2)[1])
            body = payload(BIG) if b"/big" in head.split(b"\r\n", 1)[0] else b"ok"
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            written.append(sock.getsockname()[1])

    return handle


def queued(port: int) -> int:
    """Bytes waiting in the kernel on either end of the TCP connections to ``port``."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if port in (local, remote):
            tx, rx = (int(q, 16) for q in fields[4].split(":"))
            total += tx + rx
    return total


def test_the_upstream_connection_is_pooled_as_soon_as_the_response_is_in(rex):
    served: list[bytes] = []
    written: list[int] = []
    raw = RawUpstream(keep_alive_upstream(served, written))
    try:
        port = rex.serve({"/": raw.url}, """\
            logging: {access: off}
            workers: 1
        """)
        with slow_reader(port, "/big") as (_a, f, head):
            # The upstream wrote all 8 MiB and Rex read every byte of it: the response
            # is in, while A is still stalled.
            wait_for(lambda: written and not queued(raw.port), what="the response to be in")
            # Its connection is free again: B's request rides it, no second connection.
            assert quick_get(port, "/next") < 1.0
            assert raw.connections == 1 and served == [b"/big", b"/next"]
            got = resume(f, head)
    finally:
        raw.close()
    assert digest(got) == digest(payload(BIG))


@pytest.mark.parametrize("path", [
    f"/unbuffered/big?size={HELD}",  # buffer_responses: false on the route
    f"/big?noaccel&size={HELD}",  # X-Accel-Buffering: no from the upstream
    f"/big?events&size={HELD}",  # Server-Sent Events
], ids=["route-off", "x-accel-buffering", "event-stream"])
def test_what_is_not_buffered_holds_the_upstream_as_before(site, path):
    port, up, _rex, _dir, _admin = site
    with slow_reader(port, path) as (_a, f, head):
        assert b"x-accel-buffering" not in head.lower()  # the upstream's word to Rex only
        with pytest.raises(TimeoutError):
            # The upstream is still writing to A, as a sync worker would. (A resumes
            # within the module's 1 s read timeout, or Rex would rightly cut it.)
            quick_get(port, timeout=0.5)
        got = resume(f, head)
    assert len(got) == HELD and digest(got) == digest(up.big(HELD))


# -- request bodies ----------------------------------------------------------------------------


def test_a_chunked_body_goes_upstream_whole_with_its_length(site):
    port, _up, _rex, _dir, _admin = site
    body = payload(3 * MB + 17)  # past the memory budget: spooled to a temp file
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(p), p)
                      for p in (body[i:i + 100_000] for i in range(0, len(body), 100_000)))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + chunks + b"0\r\n\r\n")
        reply = read_reply(s.makefile("rb"))
    seen = json.loads(reply.body)
    assert seen["transfer-encoding"] is None and seen["content-length"] == str(len(body))
    assert seen["size"] == len(body) and seen["sha256"] == digest(body)


def test_trailers_keep_a_buffered_body_chunked(site):
    port, _up, _rex, _dir, _admin = site
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n")
        seen = json.loads(read_reply(s.makefile("rb")).body)
    assert seen["transfer-encoding"] == "chunked" and seen["sha256"] == digest(b"hello")


def test_rex_answers_expect_100_continue_when_it_buffers(site):
    port, _up, _rex, _dir, _admin = site
    body = payload(200_000)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n"
                  b"Expect: 100-continue\r\n\r\n" % len(body))
        f = s.makefile("rb")
        assert read_head(f).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        seen = json.loads(read_reply(f).body)
    assert seen["expect"] is None and seen["sha256"] == digest(body)


def test_buffer_requests_false_streams_the_body_as_it_comes(site):
    port, _up, _rex, _dir, _admin = site
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /streamed/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                  b"\r\n5\r\nhello\r\n")
        # The upstream has the head and is reading the body: the sync worker is busy.
        with pytest.raises(TimeoutError):
            quick_get(port, timeout=0.8)
        s.sendall(b"0\r\n\r\n")
        seen = json.loads(read_reply(s.makefile("rb")).body)
    assert seen["transfer-encoding"] == "chunked" and seen["sha256"] == digest(b"hello")


# -- trickles: limits.min_rate ---------------------------------------------------------------


def test_a_body_trickled_below_the_minimum_rate_is_cut_with_a_408(site):
    port, up, _rex, _dir, _admin = site
    served = up.served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()
        reply = None
        try:
            while time.monotonic() - started < 5:
                s.sendall(b"x" * 100)  # 100 bytes every 0.3 s: each read in time, 333 B/s
                time.sleep(0.3)
                s.setblocking(False)
                try:
                    if s.recv(1, socket.MSG_PEEK):
                        break
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
        except OSError:
            pass  # Rex answered and closed while we were still sending
        reply = read_reply(s.makefile("rb"))
    assert reply.status == 408 and time.monotonic() - started < 3  # read 1 s + 0.1 s of bytes
    assert up.served == served  # the upstream never heard of it


def test_a_reader_below_the_minimum_rate_is_cut(site):
    port, _up, rex, _dir, _admin = site
    worker = rex.workers()[0]
    with slow_reader(port, "/big") as (a, _f, _head):
        client_port = a.getsockname()[1]
        started = time.monotonic()
        while connection_owner(port, client_port, [worker]) is not None:
            assert time.monotonic() - started < 6, "a trickling reader was kept"
            a.recv(100)  # about 300 bytes/s: each wait in time, the rate far below 1k
            time.sleep(0.3)


# -- many slow readers: memory bounded, temp files with no name, gone after ---------------------


def spool_files(pid: int, spool_dir: Path) -> int:
    """Descriptors worker ``pid`` holds on files in ``spool_dir`` (they have no name there)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(spool_dir)):
                count += 1
        except OSError:
            continue  # closed while we looked
    return count


@pytest.fixture
def patient(rex, tmp_path):
    """A master whose clients may pause for 30 s (the module's allows 1 s): 200 readers
    must all be connected and waiting before any of them reads on."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    up = OneAtATime()
    admin = free_port()
    port = rex.serve({"/": up.url}, f"""\
        timeouts: {{read: 30}}
        buffering: {{temp_dir: "{spool_dir}", memory: 64k, worker_memory: 8m}}
        admin: {{port: {admin}}}
        logging: {{access: off}}
        workers: 1
    """)
    yield port, up, rex, spool_dir, admin
    up.close()


def test_two_hundred_slow_readers_go_to_disk_and_leave_nothing_behind(patient):
    port, up, rex, spool_dir, admin = patient
    worker = rex.workers()[0]
    quick_get(port)  # the worker has served once: its baseline memory is warm
    base = rss_kb(worker)
    peak = base
    with ExitStack() as stack:
        readers = []
        for _ in range(200):
            readers.append(stack.enter_context(slow_reader(port, "/big")))
            peak = max(peak, rss_kb(worker))
        # Each response past the 64 KiB memory budget waits in a temp file of its own.
        wait_for(lambda: spool_files(worker, spool_dir) >= 190, timeout=20,
                 what="the responses to be read ahead into temp files")
        peak = max(peak, rss_kb(worker))
        assert os.listdir(spool_dir) == []  # the files have no name: nothing to leave behind
        assert quick_get(port) < 1.0  # and the upstream is free all along
        want = digest(up.big(BIG))
        for _s, f, head in readers:
            got = resume(f, head)
            assert len(got) == BIG and digest(got) == want
    print(f"200 slow readers of 8 MiB: worker RSS {base} -> {peak} KiB")
    # The bound: the worker's 8 MiB memory budget, plus per connection a greenlet, its
    # objects and read buffers (about 100 KiB each), with room for the allocator.
    assert peak - base < 48 * 1024
    wait_for(lambda: spool_files(worker, spool_dir) == 0, what="the temp files to be closed")
    # The worker publishes its figures with each heartbeat: the disk gauge drops to 0.
    metrics = wait_for(lambda: (text := scrape(admin)) and 'where="disk"} 0\n' in text and text,
                       what="the buffered bytes gauge to drop")
    spooled = [line for line in metrics.splitlines()
               if line.startswith('rex_spooled_total{direction="response"}')]
    assert spooled and float(spooled[0].split()[-1]) >= 190
    assert 'rex_buffered_bytes{worker="1",generation="1",where="memory"} 0\n' in metrics


def scrape(admin: int) -> str:
    return send_request(admin, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").body.decode()


def test_without_a_temp_dir_bodies_get_a_500_and_responses_stream_as_before(rex, tmp_path):
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    up = OneAtATime()
    try:
        port = rex.serve({"/": up.url}, f"""\
            buffering: {{temp_dir: "{spool_dir}", memory: 64k}}
            workers: 1
        """)
        spool_dir.rmdir()  # gone after the start: nothing can spill
        body = payload(MB)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                      % len(body) + body)
            assert read_reply(s.makefile("rb")).status == 500  # as nginx answers
        with slow_reader(port, "/big") as (_a, f, head):
            # A stalls; Rex cannot read ahead, says why, and relays as before.
            wait_for(lambda: "cannot buffer a response" in rex.output(), what="the error line")
            got = resume(f, head)
        assert len(got) == BIG and digest(got) == digest(up.big(BIG))
        assert "cannot buffer the request body" in rex.output()
    finally:
        up.close()
