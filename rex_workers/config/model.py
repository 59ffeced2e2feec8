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


# Media types compressed on the fly when ``compress.types`` is not given
# (docs/compression.md): text, and the formats that are text underneath.
# Already-compressed formats (images, video, zip, woff2) gain nothing.
COMPRESSIBLE_TYPES = (
    "text/*",
    "application/json", "application/*+json", "application/x-ndjson",
    "application/javascript", "application/x-javascript", "application/ecmascript",
    "application/xml", "application/*+xml", "image/svg+xml",
    "application/wasm",
    "application/yaml", "application/x-yaml", "application/toml",
    "application/graphql", "application/x-www-form-urlencoded",
    "font/ttf", "font/otf", "application/vnd.ms-fontobject",
    "image/x-icon", "image/vnd.microsoft.icon", "image/bmp",
)


@dataclass(frozen=True, slots=True)
class Compression:
    """On-the-fly compression where ``compress`` is on (None on a scope: off)."""

    # In the server's order of preference when a client rates them equally; br is
    # dropped from the default when the brotli package is not installed.
    algorithms: tuple[str, ...] = ("br", "gzip")
    min_length: int = 512  # bytes; a body of unknown length is compressed (Caddy's figure)
    gzip_level: int = 5  # 1-9: zlib's default is 6, nginx's 1, Caddy's 5
    br_level: int = 4  # 0-11: 11 is for files compressed once, not per response
    types: tuple[str, ...] = COMPRESSIBLE_TYPES


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
class BasicAuth:
    """``auth: {basic: ...}``: users and their bcrypt hashes, checked per request."""

    users: tuple[tuple[str, str], ...]  # (name, bcrypt hash), inline or from the file
    realm: str = "Restricted"
    htpasswd: str | None = None  # the file the users came from (absolute), if any


@dataclass(frozen=True, slots=True)
class ForwardAuth:
    """``auth: {forward: ...}``: an auth service asked about each request (a sub-request)."""

    url: str  # http(s)://host[:port]/path[?query]
    copy_headers: tuple[str, ...] = ()  # from its 2xx answer into the request, as spelt


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
class HeaderRules:
    """Edits of one direction's header fields, applied as remove, then set, then add.

    Values are templates (``{client_ip}``, ``{request_id}``… see docs/headers.md).
    """

    set: tuple[tuple[str, str], ...] = ()  # replaces every field of the name
    add: tuple[tuple[str, str], ...] = ()  # one more field line
    remove: tuple[str, ...] = ()  # lower-case names


@dataclass(frozen=True, slots=True)
class Cors:
    """Cross-origin resource sharing: Rex answers preflights and sets the response fields."""

    origins: tuple[str, ...]  # "scheme://host[:port]" (lower-case) or "*"
    methods: tuple[str, ...] = ("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE")
    headers: tuple[str, ...] | None = None  # None: those a preflight asks for
    expose: tuple[str, ...] = ()
    credentials: bool = False
    max_age: int | None = None  # seconds a browser may cache a preflight's answer


@dataclass(frozen=True, slots=True)
class Rules:
    """The front door's keys at one level (top, instance, route); None: not set there.

    The nearest level that sets a key wins; ``request_headers`` and
    ``response_headers`` are applied level after level (so the nearest wins
    field by field), ``error_pages`` merge by status.
    """

    request_headers: HeaderRules | None = None
    response_headers: HeaderRules | None = None
    security_headers: bool | None = None
    cors: Cors | bool | None = None  # False: none here, whatever an outer level says
    error_pages: tuple[tuple[str, str], ...] = ()  # ("404" or "5xx", absolute file)
    intercept_errors: bool | None = None
    trailing_slash: str | None = None  # routes only: "add" or "remove" (a 308 to the other)


@dataclass(frozen=True, slots=True)
class Redirect:
    """A route that answers with a redirect instead of a destination."""

    to: str  # a template: placeholders and the pattern's captures ({1}, {2}...)
    status: int = 302


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
    """One ``routes[]`` entry: one of ``upstreams`` / ``wsgi`` / ``static`` / ``redirect``."""

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
    # Access rules, resolved: the route's own, else its instance's (``auth: false`` -> None;
    # a route that sets ``allow`` or ``deny`` replaces both of its instance's lists).
    auth: BasicAuth | ForwardAuth | None = None
    allow: tuple[str, ...] = ()  # CIDRs; () = no allow list (anyone not denied)
    deny: tuple[str, ...] = ()
    redirect: Redirect | None = None
    rewrite: str | None = None  # template of the path (and query) sent upstream
    rules: Rules = field(default_factory=Rules)
    static_options: StaticOptions | None = None  # static: routes: the instance's, overridden
    compress: Compression | None = None  # resolved: the route's, else its instance's
    rate_limit: RateLimit | None = None  # None: the instance's, if it has one
    max_in_flight: int | None = None  # None: the instance's, if it has one
    line: int = 0  # config line, for messages


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
    # HTTP/2 (docs/http2.md): True offers h2 by ALPN on a TLS instance (no effect without
    # TLS); "cleartext" serves h2c with prior knowledge beside HTTP/1.1; False: never.
    http2: bool | str = True
    routes: tuple[Route, ...] = ()
    static: StaticOptions = field(default_factory=StaticOptions)
    # What the instance answers itself (files, the global pool, pages); routes copy these
    # unless they set their own (see Route).
    auth: BasicAuth | ForwardAuth | None = None
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    rules: Rules = field(default_factory=Rules)
    # The top level's rules, which the instance's own override: copied here by the
    # loader so that a site needs nothing but its instance (not written by dump).
    inherited: Rules = field(default_factory=Rules)
    compress: Compression | None = None  # resolved: the instance's, else the top level's
    rate_limit: RateLimit | None = None  # for requests no route with its own limit takes
    max_in_flight: int | None = None
    line: int = 0

    @property
    def guarded(self) -> bool:
        """Whether any request to this instance meets an access rule (else none runs)."""
        return any(x.auth or x.allow or x.deny for x in (self, *self.routes))

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
    rules: Rules = field(default_factory=Rules)  # the top level's front-door keys
    compress: Compression | None = None  # the top level's (instances hold their own)
    rate_limits: RateLimits = field(default_factory=RateLimits)
    user: str | None = None  # workers switch to this account; "root" says root on purpose
    group: str | None = None  # None: the user's own group

    @property
    def has_wsgi(self) -> bool:
        return any(r.wsgi for i in self.instances for r in i.routes)
