"""What a worker is started with: everything the master hands it across the fork.

The master builds one ``WorkerBoot`` before it forks; the child passes it to
``serve.worker.main`` and nothing else travels. May: name the pieces and
derive what follows from them (the process title). May not: import gevent
(the master imports this module) or act on any of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

    from ..config.model import Config
    from ..config.routing import VirtualHosts
    from .metrics import Shared
    from .scoreboard import SlotWriter

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class WorkerBoot:
    """One worker's start: its generation's config and routes, its sockets and its slots."""

    config: Config
    vhosts: dict[Address, VirtualHosts]  # the generation's compiled routing, per address
    sockets: dict[Address, socket.socket]  # bound by the master; the worker accepts on them
    slot: SlotWriter  # the worker's scoreboard slot: state and heartbeat
    worker_id: int  # 1..workers within the generation
    generation: int
    master_pid: int  # the worker drains when its parent is no longer this pid
    log_path: str = ""  # where a daemon's stdout/stderr go: reopened on SIGUSR1
    shared: Shared | None = None  # metrics and health tables the master reads

    @property
    def title(self) -> str:
        """What ps shows for this worker."""
        return f"rex: worker {self.worker_id} [gen {self.generation}]"
