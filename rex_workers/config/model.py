"""The typed, frozen configuration every part of Rex works from.

The loader (``config.py``) is the only code that sees raw YAML dicts; it builds
these objects once and everything downstream (master, routing table, workers)
reads them. Pure data: no I/O, no gevent, safe to import in the master.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Defaults live here, beside the fields they fill, so the schema, the docs and
# the code agree on one number each.
DEFAULT_HOST = "0.0.0.0"
DEFAULT_INDEX = ("index.html",)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. ``header``: whole request head; ``idle``: keep-alive between requests."""

    connect: float = 5.0
    read: float = 60.0
    header: float = 10.0
    idle: float = 75.0  # nginx's keepalive_timeout default


@dataclass(frozen=True, slots=True)
class Limits:
    header_bytes: int = 16 * 1024  # Node's and llhttp's default maximum head size
    # One request line (414) and one field line (431): nginx's 8k buffer that each
    # must fit in (large_client_header_buffers), gunicorn's 4094 and 8190.
    request_line_bytes: int = 8 * 1024
    field_bytes: int = 8 * 1024
    header_fields: int = 100  # field lines in a head (431); gunicorn's limit_request_fields
    body_bytes: int = 1024**3  # 1 GiB; a proxy for dev boxes must take real uploads
    connections: int = 16384  # per worker; RLIMIT_NOFILE is raised to the hard limit
    # Bytes/s a request body or a response must average once ``timeouts.read`` has
    # passed (Apache's MinRate): a trickle is cut after a bounded time. 0: off.
    min_rate: int = 500


@dataclass(frozen=True, slots=True)
class Buffering:
    """Where proxied bodies wait between a fast side and a slow one (docs/proxying.md)."""

    temp_dir: str | None = None  # None: the system's ($TMPDIR, else /tmp)
    memory: int = 256 * 1024  # per body kept in memory before spilling to a temp file
    worker_memory: int = 64 * 1024**2  # all bodies held in memory by one worker
    max_temp_file: int = 1024**3  # a response spilled this far waits for its client (nginx)


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """How Rex speaks TLS to an ``https://`` upstream (``tls:`` on a route or a destination)."""

    ca: str | None = None  # PEM file of the CAs to trust instead of the system's; absolute
    verify: bool = True  # False: any certificate, any name (development only)
    server_name: str | None = None  # SNI and the name to verify; None: the destination's host
    cert: str | None = None  # client certificate (PEM), for upstreams that ask for one
    key: str | None = None  # its private key, unencrypted


@dataclass(frozen=True, slots=True)
class Upstream:
    """One backend address. ``base_path`` is "" unless the destination had a path."""

    url: str
    scheme: str  # "http" or "https"
    host: str
    port: int
    base_path: str = ""
    weight: int = 1
    backup: bool = False
    max_fails: int = 1
    fail_timeout: float = 10.0
    tls: UpstreamTLS | None = None  # https only; None: verified against the system's CAs
    # Stable identity used by balancers, health state and metrics; made once here
    # because the hot path asks for it several times per request.
    key: str = field(init=False, repr=False, compare=False)
    # What a connection to it is pooled and probed by: the address and how TLS is
    # spoken there (two client certificates for one server are two identities).
    conn_key: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = f"{self.scheme}://{self.host}:{self.port}"
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "conn_key", (key, self.tls))

    @property
    def tls_name(self) -> str:
        """The name sent by SNI and checked in the upstream's certificate."""
        return (self.tls and self.tls.server_name) or self.host


@dataclass(frozen=True, slots=True)
class HealthCheck:
    path: str = "/"
    interval: float = 5.0
    timeout: float = 2.0
    fails: int = 2
    passes: int = 2


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate_limit``: ``count`` requests per ``period`` seconds, ``burst`` of them at once.

    ``key`` is what one budget belongs to: ``client_ip``, ``route`` (everyone shares
    it) or ``header:NAME`` (one budget per value of that request header).
    """

    count: int  # "10/s" -> 10
    period: float  # "10/s" -> 1.0 seconds
    burst: int  # requests that may arrive at once; the count by default
    key: str = "client_ip"

    @property
    def interval(self) -> float:
        """Seconds between requests at the steady rate (GCRA's emission interval)."""
        return self.period / self.count


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Top-level ``rate_limits``: where the budgets live, and what to do when that fails."""

    store: str = "local"  # "local" (this node's shared memory) or a redis:// URL
    on_store_error: str = "local"  # Redis unreachable: "local", "allow" or "deny"


@dataclass(frozen=True, slots=True)
class Route:
    """One ``routes[]`` entry. Exactly one of ``upstreams`` / ``wsgi`` / ``static`` is set."""

    path: str  # the pattern as written, e.g. "/api", "/assets/*.js", "/*"
    index: int  # position in the file: the last tie-breaker
    upstreams: tuple[Upstream, ...] = ()
    wsgi: str | None = None  # "package.module:callable" or "module:factory()"
    static: str | None = None  # absolute directory; its files replace the matched prefix
    strip_prefix: bool = False
    preserve_host: bool = False
    methods: frozenset[str] | None = None  # None: every method
    priority: int = 0
    balance: str = "round_robin"
    health_check: HealthCheck | None = None
    retries: int = 1  # extra attempts on another upstream (idempotent requests)
    timeouts: Timeouts = field(default_factory=Timeouts)
    pool: int | None = None  # WSGI: max concurrent app calls per worker
    buffer_requests: bool = True  # read a request body whole before choosing an upstream
    buffer_responses: bool = True  # read a response ahead of a slow client
    rate_limit: RateLimit | None = None  # None: the instance's, if it has one
    max_in_flight: int | None = None  # None: the instance's, if it has one
    line: int = 0  # config line, for messages


@dataclass(frozen=True, slots=True)
class StaticOptions:
    index: tuple[str, ...] = DEFAULT_INDEX
    fallback: str | None = None  # SPA fallback file, relative to the root
    cache_control: str | None = None
    precompressed: bool = True
    listing: bool = False
    follow_symlinks: bool = False
    dotfiles: bool = False


@dataclass(frozen=True, slots=True)
class TLS:
    cert: str  # absolute paths
    key: str


@dataclass(frozen=True, slots=True)
class Instance:
    index: int
    port: int
    host: str = DEFAULT_HOST
    public: str | None = None  # absolute, existing directory
    server_names: tuple[str, ...] = ()  # empty: any host
    tls: TLS | None = None
    redirect_https: bool = False  # answer every request with a 308 to https
    # Where that redirect goes: (server_names, port) of each TLS instance reachable at
    # this instance's address, in file order; the request's Host picks one as a TLS
    # listener picks its site. ``redirect_https: 8443`` gives (((), 8443),).
    https_ports: tuple[tuple[tuple[str, ...], int], ...] = ()
    routes: tuple[Route, ...] = ()
    static: StaticOptions = field(default_factory=StaticOptions)
    rate_limit: RateLimit | None = None  # for requests no route with its own limit takes
    max_in_flight: int | None = None
    line: int = 0

    @property
    def limited(self) -> bool:
        """Whether any request of this instance passes a rate or concurrency limit."""
        return any(x.rate_limit or x.max_in_flight for x in (self, *self.routes))

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


@dataclass(frozen=True, slots=True)
class Logging:
    access: str | None = "stdout"  # "stdout", "stderr", a path, or None (off)
    format: str = "combined"  # or "json"
    error: str = "stderr"  # "stderr", "stdout" or a path
    level: str = "info"


@dataclass(frozen=True, slots=True)
class Admin:
    port: int
    host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Config:
    path: str  # absolute path of the YAML file ("" for the built-in default)
    digest: str  # sha256 of the file's bytes: reloads compare it
    instances: tuple[Instance, ...]
    upstream: tuple[Upstream, ...] = ()  # the original's global round-robin pool
    upstream_balance: str = "round_robin"
    workers: int = 1  # "auto" already resolved to the usable CPU count
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    buffering: Buffering = field(default_factory=Buffering)
    logging: Logging = field(default_factory=Logging)
    admin: Admin | None = None
    graceful_timeout: float = 30.0
    timeout: float = 30.0  # heartbeat: a worker silent this long is replaced
    max_requests: int = 0  # 0: never recycle
    max_requests_jitter: int = 0
    reuse_port: bool = False
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-* are kept
    monkey_patch: bool = False
    pythonpath: tuple[str, ...] = ()  # absolute directories
    rate_limits: RateLimits = field(default_factory=RateLimits)
    user: str | None = None  # workers switch to this account; "root" says root on purpose
    group: str | None = None  # None: the user's own group

    @property
    def has_wsgi(self) -> bool:
        return any(r.wsgi for i in self.instances for r in i.routes)
