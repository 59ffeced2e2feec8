"""A worker process: gevent servers on the sockets the master bound.

Called by the master in the child right after ``fork``; it never returns into
the master's code. Order matters (SPEC §8, §9): gevent's hub is reinitialised
first, then ``monkey.patch_all()`` if the config asks for it (WSGI routes),
and only then is application code imported. May: accept on the inherited
sockets, serve connections, write its own scoreboard and metrics slots,
probe upstreams (worker 1 only) into the generation's health table, drop root
(``user``) once its TLS contexts are loaded. May not:
bind, touch another slot, or outlive the master.

Signals: TERM drains (stop accepting, let in-flight requests and WebSockets
finish up to ``graceful_timeout``, close idle keep-alives), INT and QUIT stop
at once, USR1 reopens log files, HUP/TTIN/TTOU are the master's and ignored.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Iterable
from typing import NoReturn

import gevent
import gevent.event
import gevent.socket

from ..http.wire import WAITING, peek, shutdown
from ..shared import privileges
from ..shared.boot import WorkerBoot
from ..shared.proctitle import set_title
from ..shared.scoreboard import BOOT_FAILED, DRAINING, READY

# A keep-alive connection that is idle when the drain starts may be a client
# that has just read a response and is about to send its next request. Closing
# it at once races that request (the client sees a reset on a reused
# connection), and so does closing a busy one right after a response that
# promised keep-alive. So a connection is marked ``keep_alive = False`` only
# while it is idle, which makes its *next* response say ``Connection: close``;
# clients still in use get one more response and leave cleanly. Connections
# that stay idle this long are then closed: only those can meet a request on
# the way, and RFC 9112 §9.3.1 lets their clients retry on a new connection.
IDLE_GRACE = 1.0
DRAIN_TICK = 0.02  # seconds between looks for connections idle past IDLE_GRACE


def main(boot: WorkerBoot, drop: Iterable = ()) -> NoReturn:
    """The forked child's entry point: close what is not ours, run, exit; never returns.

    ``drop`` holds the master's descriptors (ints) and sockets the worker must not keep.
    """
    code = 1
    try:
        for item in drop:
            if isinstance(item, int):
                os.close(item)
            elif item is not None:
                item.close()
        code = run(boot)
    except BaseException:  # whatever happens, the child must not return into the master
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run(boot: WorkerBoot) -> int:
    """The whole life of a worker; returns its exit status.

    ``boot.log_path`` is the file the master's stdout/stderr go to when it is
    a daemon: on SIGUSR1 the worker points its own stdout/stderr there again.
    """
    config, slot = boot.config, boot.slot
    gevent.reinit()
    slot.boot(os.getpid())
    for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
        # The master's signals (and a terminal's HUP); USR1 until serve_forever handles it.
        signal.signal(sig, signal.SIG_IGN)
    set_title(boot.title)
    try:
        # A Redis rate store talks through redis-py's sockets: patched, they wait in the hub.
        if config.monkey_patch or config.has_wsgi or config.rate_limits.store != "local":
            from gevent import monkey

            monkey.patch_all()
        worker = Worker(boot)
    except Exception as exc:  # any boot failure is reported to the master, not raised
        slot.fail(f"worker {boot.worker_id} could not start: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        return BOOT_FAILED
    return worker.serve_forever()


class Worker:
    """One process's servers, its heartbeat and its way out (drain or stop)."""

    def __init__(self, boot: WorkerBoot) -> None:
        from gevent.pool import Pool
        from gevent.ssl import SSLContext

        from ..proxy.prober import HealthSharing
        from ..shared.tls import listener_context
        from .accept import Entry
        from .park import Lot, ParkingServer
        from .runtime import Runtime

        config, vhosts, shared = boot.config, boot.vhosts, boot.shared
        self.config = config
        self.slot = boot.slot
        self.title = boot.title
        self.master_pid = boot.master_pid
        self.log_path = boot.log_path
        self.draining = False
        self.stopping = gevent.event.Event()
        self.shared = shared
        # Certificates and keys are read here, as root if the master is, so a reload reads
        # renewed files; then the worker drops to `user` before any app is imported.
        # gevent's SSLContext, not the stdlib's: its sockets wait in the hub.
        contexts = {address: listener_context(vhosts[address].instances, vhosts[address].select,
                                              SSLContext) for address in boot.sockets}
        if config.user is not None:
            privileges.drop(privileges.account(config.user, config.group))
        self.rt = Runtime(config, vhosts, f"[worker {boot.worker_id}] ",
                          shared.metrics.layout if shared else None, shared)
        # Worker 1 of the generation is the one prober (SPEC §6: probes are not
        # multiplied by the number of workers); every worker applies the verdicts.
        self.health = (HealthSharing(shared.health, [(r, g) for _s, r, g in self.rt.groups()],
                                     boot.worker_id == 1, self.rt.log.info) if shared else None)
        self.pool = Pool(config.limits.connections)
        self.rt.lot = Lot(self.pool, gevent.get_hub().loop)
        self.servers = []
        for address, sock in boot.sockets.items():
            listener = self.rt.listeners[address]
            context = contexts[address]
            gsock = gevent.socket.socket(sock.family, sock.type, sock.proto,
                                         fileno=os.dup(sock.fileno()))
            sock.close()  # the worker keeps only its gevent copy of the master's socket
            self.servers.append(ParkingServer(gsock, Entry(listener, self.rt, context),
                                              self.rt.lot, spawn=self.pool))
        jitter = config.max_requests_jitter
        # Jitter keeps workers started together from all recycling at once.
        self.max_requests = (config.max_requests + random.randint(0, jitter)
                             if config.max_requests else 0)

    # -- life ---------------------------------------------------------------------
    def serve_forever(self) -> int:
        gevent.signal_handler(signal.SIGTERM, self.drain, "SIGTERM")
        gevent.signal_handler(signal.SIGINT, self.stop_now)
        gevent.signal_handler(signal.SIGQUIT, self.stop_now)
        gevent.signal_handler(signal.SIGUSR1, self.reopen_logs)
        for server in self.servers:
            server.start()
        if self.health is not None:
            self.health.start()
        self.slot.beat(0, 0, READY)
        beat = gevent.spawn(self._heartbeat)
        self.stopping.wait()
        beat.kill()
        self.publish()  # the master folds these last counts into its totals when it reaps us
        return 0

    def publish(self) -> None:
        """Copy this worker's metrics into its shared slot (every heartbeat, and at exit)."""
        if self.shared is not None:
            self.rt.gauges()
            self.shared.metrics.publish(self.shared.slot, self.rt.metrics.values)

    def _heartbeat(self) -> None:
        """Prove the hub runs; a blocked hub stops this loop and the master notices."""
        interval = max(min(self.config.timeout / 4, 1.0), 0.05)
        rt = self.rt
        while True:
            self.slot.beat(rt.requests, rt.open_connections)
            self.publish()
            if os.getppid() != self.master_pid:
                # Orphaned (the master was killed): nobody would replace or stop us.
                self.drain("the master is gone")
            elif self.max_requests and rt.requests >= self.max_requests:
                # Recycling takes the graceful path; the master sees DRAINING in
                # the slot and starts the replacement at once.
                self.drain(f"recycling after {rt.requests} requests")
            gevent.sleep(interval)

    def reopen_logs(self) -> None:
        if self.log_path:
            try:
                fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:  # a worker that dropped root may not reach $REX_HOME
                self.rt.log.error(f"cannot reopen {self.log_path}: {exc.strerror}; "
                                  "writing on where it was")
            else:
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
        self.rt.log.reopen()

    # -- stopping -------------------------------------------------------------------
    def drain(self, why: str) -> None:
        """Stop accepting; finish what is in flight; then exit (SPEC §9)."""
        if self.draining:
            return
        self.draining = True
        rt = self.rt
        # A request that starts from now on is its connection's last (its response says
        # Connection: close); the ones in flight keep theirs, and idle connections are
        # closed by ``_drain``.
        rt.drain_began = True
        self.slot.beat(rt.requests, rt.open_connections, DRAINING)
        if self.health is not None:
            self.health.stop()  # the new generation's worker 1 probes from now on
        set_title(f"{self.title} draining")
        rt.log.info(f"draining ({why})")
        for server in self.servers:
            server.close()  # the master's copy keeps the socket (and its queue) alive
        for conn in list(rt.connections):
            begin = getattr(conn, "begin_drain", None)  # HTTP/2: GOAWAY at once
            if begin is not None:
                begin()
        gevent.spawn(self._drain)

    def _drain(self) -> None:
        # A busy connection turns idle when its handler blocks waiting for the next
        # request; a prepare watcher runs each time the hub is about to block, so it
        # sees that moment without polling for it.
        marker = gevent.get_hub().loop.prepare(ref=False)
        marker.start(self._mark_idle)
        grace = min(IDLE_GRACE, self.config.graceful_timeout / 2)
        deadline = time.monotonic() + self.config.graceful_timeout
        idle_since: dict = {}
        try:
            while len(self.pool) and time.monotonic() < deadline:
                now = time.monotonic()
                idle_since = {conn: idle_since.get(conn, now) for conn in self.rt.connections
                              if conn.idle}
                for conn, since in idle_since.items():
                    if now - since >= grace and _quiet(conn):
                        shutdown(conn.sock)  # wakes the connection's recv with EOF
                gevent.sleep(DRAIN_TICK)
        finally:
            marker.stop()
        self.stop_now()

    def _mark_idle(self) -> None:
        for conn in self.rt.connections:
            if conn.idle:
                conn.keep_alive = False  # its next response says Connection: close

    def stop_now(self) -> None:
        """INT/QUIT, or the drain's deadline: cut whatever is left."""
        self.draining = True
        self.rt.draining = True
        for server in self.servers:
            server.close()
        for tunnel in list(self.rt.tunnels):
            tunnel.kill(block=False)
        self.pool.kill(block=False)
        self.stopping.set()


def _quiet(conn) -> bool:
    """No request under way: no partial head parsed, no unread bytes from the client."""
    if conn.reader is not None and conn.reader.in_head:
        return False
    pending = getattr(conn.sock, "pending", None)  # TLS: bytes decrypted but not yet read
    if pending is not None and pending():
        return False
    # Nothing to read is quiet; a socket already closed or broken has nothing
    # left to lose either, and closing it is all that is left.
    return peek(conn.sock) != WAITING



