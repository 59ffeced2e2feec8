"""Load ``rex.config.yaml`` into the frozen model (``model.py``), or say every problem at once.

May: read the one file, compose its YAML node tree to keep line numbers, run the schema
(``schema.py``, through ``validator.py``), check the rules that span instances, and build
model objects. May not: bind sockets, import the WSGI apps it names, import gevent, print
or exit; the CLI prints ``str(ConfigError)`` and exits 2. Every error line reads
``file:line: dotted.path: message``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import fields, replace

import yaml

from .htpasswd import read_htpasswd
from .model import (
    DEFAULT_HOST,
    TLS,
    Admin,
    BasicAuth,
    Buffering,
    Compression,
    Config,
    Cors,
    ForwardAuth,
    HeaderRules,
    HealthCheck,
    Instance,
    Limits,
    Logging,
    RateLimit,
    RateLimits,
    Redirect,
    Route,
    Rules,
    StaticOptions,
    Timeouts,
    Upstream,
    UpstreamTLS,
)
from .schema import SCHEMA, STATIC_PREFIX, brotli_installed, parse_destination, parse_rate
from .validator import RexValidator

__all__ = ["ConfigError", "config_digest", "default_config", "load_config", "parse_destination"]

DEFAULT_PORT = 8000  # the original's `rex --init` instance
ADMIN_HOST = next(f.default for f in fields(Admin) if f.name == "host")


class ConfigError(Exception):
    """A config that must not start. ``errors`` holds one ``file:line: ...`` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


def load_config(path: str) -> Config:
    """Read, validate and build the config at ``path``; raise ConfigError listing every problem."""
    raw = _read(path)
    data, lines, problems = _parse(path, raw)
    # top-level "x-" keys hold YAML anchors for reuse (Docker Compose's convention)
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    validator = RexValidator(SCHEMA, base_dir=os.path.dirname(os.path.abspath(path)))
    validator.validate(data)
    doc = validator.document
    problems += validator.errors
    problems += _listener_problems(doc, lines) + _route_problems(doc, lines)
    if problems:
        raise ConfigError(_format(path, lines, problems))
    return _build(doc, lines, os.path.abspath(path), hashlib.sha256(raw).hexdigest())


def config_digest(path: str) -> str:
    """sha256 hex of the file's bytes, what ``Config.digest`` holds: reloads compare the two."""
    return hashlib.sha256(_read(path)).hexdigest()


def default_config() -> Config:
    """What runs with no config file: one instance on port 8000 showing the welcome page."""
    return Config(path="", digest="", instances=(Instance(index=0, port=DEFAULT_PORT),))


# ------------------------------------------------------------------ reading YAML


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None


def _parse(path: str, raw: bytes) -> tuple[dict, dict, list]:
    """The document, a map from document path to line, and duplicate-key problems."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}:{line}: not UTF-8 text"]) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError([f"{path}:1: the config file is empty"])
        lines: dict = {(): node.start_mark.line + 1}
        duplicates: list = []
        # before construction, which flattens `<<` merge keys into the mappings
        _map_lines(loader, node, (), lines, duplicates, set())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_error(path, text, exc)]) from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError([f"{path}:1: the config file is empty"])
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:{lines[()]}: the config must be a mapping (server: ...)"])
    return data, lines, duplicates


MERGE = "tag:yaml.org,2002:merge"


def _map_lines(loader, node, path: tuple, lines: dict, duplicates: list, active: set) -> None:
    """Record the line of every key and list item; the key's line stands for its value."""
    if id(node) in active:  # a recursive alias (&a [*a]) would be walked forever
        return
    active = active | {id(node)}
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _map_lines(loader, item, (*path, i), lines, duplicates, active)
    elif isinstance(node, yaml.MappingNode):
        # `<<: *anchor` keys first: the mapping's own keys override what they bring
        for key_node, value_node in node.value:
            if key_node.tag == MERGE:
                many = isinstance(value_node, yaml.SequenceNode)  # <<: [*a, *b]
                for source in value_node.value if many else [value_node]:
                    _map_lines(loader, source, path, lines, [], active)
        own: set = set()
        for key_node, value_node in node.value:
            if key_node.tag == MERGE or not isinstance(key_node, yaml.ScalarNode):
                continue  # a list as a key: construction rejects it with its line
            child = (*path, loader.construct_object(key_node))
            if child in own:  # PyYAML keeps the last one, so its line stands from now on
                duplicates.append((child, f"duplicate key (first at line {lines[child]})"))
            own.add(child)
            lines[child] = key_node.start_mark.line + 1
            _map_lines(loader, value_node, child, lines, duplicates, active)


def _yaml_error(path: str, text: str, exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's "while <context> at line A, <problem> at line B" as one line at B."""
    mark = exc.problem_mark or exc.context_mark
    last_line = max(1, len(text.splitlines()))  # the end of the stream is past the last line
    line = min(mark.line + 1, last_line) if mark else 1
    message = exc.problem or "invalid YAML"
    if exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
        message = f"{exc.context} at line {exc.context_mark.line + 1}, {message}"
    elif exc.context:
        message = f"{exc.context}, {message}"
    return f"{path}:{line}: YAML syntax error: {message}"


def _line_of(lines: dict, path: tuple) -> int:
    """A missing key has no line of its own: use its closest present parent's."""
    while path not in lines:
        path = path[:-1]
    return lines[path]


def _format(path: str, lines: dict, problems: list) -> list[str]:
    found = {}
    for doc_path, message in problems:
        line = _line_of(lines, tuple(doc_path))
        dotted = ".".join(str(p) for p in doc_path)
        text = f"{path}:{line}: {dotted}: {message}" if dotted else f"{path}:{line}: {message}"
        found.setdefault(text, (line, dotted))
    return sorted(found, key=found.__getitem__)


# ----------------------------------------------------- rules spanning instances


def _instances(doc: dict) -> list[tuple[int, dict]]:
    """The instance mappings that are well-formed enough to compare (others got errors)."""
    server = doc.get("server")
    items = server.get("instances") if isinstance(server, dict) else None
    if not isinstance(items, list):
        return []
    return [(i, x) for i, x in enumerate(items) if isinstance(x, dict)
            and isinstance(x.get("port"), int) and isinstance(x.get("host", ""), str)]


def _overlap(host_a: str, host_b: str) -> bool:
    """Whether binding both addresses on one port fails (Linux defaults)."""
    if host_a == host_b or "::" in (host_a, host_b):  # "::" is dual-stack: it takes IPv4 too
        return True
    if "0.0.0.0" in (host_a, host_b):  # the IPv4 wildcard takes every IPv4 address
        return ":" not in (host_b if host_a == "0.0.0.0" else host_a)
    return False


def _listener_problems(doc: dict, lines: dict) -> list:
    """One socket per host:port: instances may share it only as virtual hosts (server_names)."""
    problems = []
    seen: list[tuple[int, dict]] = []
    for i, inst in _instances(doc):
        host, port = inst.get("host", DEFAULT_HOST), inst["port"]
        names = _strings(inst.get("server_names"))
        where = ("server", "instances", i)
        for j, other in seen:
            other_host = other.get("host", DEFAULT_HOST)
            if other["port"] != port or not _overlap(host, other_host):
                continue
            at = f"instance {j}, line {_line_of(lines, ('server', 'instances', j))}"
            other_names = _strings(other.get("server_names"))
            if host != other_host:
                msg = f"{host}:{port} overlaps {other_host}:{port} ({at}); use the same host"
            elif not names and not other_names:
                msg = f"duplicate listener {host}:{port} ({at}); give them different server_names"
            elif names & other_names:
                shared = ", ".join(sorted(names & other_names))
                msg = f"{host}:{port} already serves {shared} ({at})"
            elif _has_tls(inst) != _has_tls(other):
                msg = f"instances sharing {host}:{port} must all use TLS or none ({at})"
            else:
                continue
            problems.append(((*where, "port"), msg))
            break
        seen.append((i, inst))
    problems += _admin_problems(doc, seen)
    return problems


def _strings(value: object) -> set[str]:
    return {x for x in value if isinstance(x, str)} if isinstance(value, list) else set()


def _has_tls(inst: dict) -> bool:
    return "tls" in inst or "sslConfig" in inst


def _admin_problems(doc: dict, instances: list) -> list:
    admin = doc.get("admin")
    if not isinstance(admin, dict) or not isinstance(admin.get("port"), int):
        return []
    host = admin.get("host", ADMIN_HOST)
    for j, inst in instances:
        if inst["port"] == admin["port"] and _overlap(host, inst.get("host", DEFAULT_HOST)):
            return [(("admin", "port"), f"port {admin['port']} is also used by instance {j}")]
    return []


def _route_problems(doc: dict, lines: dict) -> list:
    """A second route with the same pattern and methods could never be chosen."""
    problems = []
    for i, inst in _instances(doc):
        seen: dict[str, list] = {}
        routes = inst.get("routes")
        for r, route in enumerate(routes if isinstance(routes, list) else []):
            if not isinstance(route, dict) or not isinstance(route.get("path"), str):
                continue
            methods = _strings(route.get("methods")) or {"*"}
            for other_r, other_methods in seen.get(route["path"], []):
                if "*" in methods | other_methods or methods & other_methods:
                    where = ("server", "instances", i, "routes", r, "path")
                    first = _line_of(lines, ("server", "instances", i, "routes", other_r))
                    problems.append((where, f"duplicate route {route['path']} (first at line "
                                            f"{first})"))
                    break
            seen.setdefault(route["path"], []).append((r, methods))
    return problems


# ------------------------------------------------------------------ building


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset and container CPU sets
    except AttributeError:  # macOS has no affinity API
        return os.cpu_count() or 1


def _upstream(entry: str | dict, route_tls: dict | None = None) -> Upstream:
    """One destination; its own ``tls:`` overrides its route's (``route_tls``) key by key."""
    if isinstance(entry, str):
        entry = {"url": entry}
    options = {k: v for k, v in entry.items() if k not in ("url", "tls")}
    up = parse_destination(entry["url"])
    tls = {**(route_tls or {}), **entry.get("tls", {})}
    if tls and up.scheme == "https":  # a route's tls: leaves its http:// destinations alone
        options["tls"] = UpstreamTLS(**tls)
    return replace(up, **options)


def _present(raw: dict, keys: tuple[str, ...]) -> dict:
    """Only the keys the file sets, so that every default stays the one in model.py."""
    return {k: raw[k] for k in keys if k in raw}


def _auth(value: dict | bool) -> BasicAuth | ForwardAuth | None:
    if not isinstance(value, dict):  # auth: false
        return None
    if "forward" in value:
        forward = value["forward"]
        return ForwardAuth(url=forward["url"].strip(),
                           copy_headers=tuple(forward.get("copy_headers", ())))
    basic = value["basic"]
    path = basic.get("htpasswd")
    users = read_htpasswd(path)[0] if path else list(basic["users"].items())
    return BasicAuth(users=tuple(users), htpasswd=path, **_present(basic, ("realm",)))


def _networks(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(ipaddress.ip_network(v, strict=False)) for v in values))


def _access(raw: dict, inherited: dict | None = None) -> dict:
    """``auth``, ``allow``, ``deny`` of an instance, or of a route starting from its
    instance's: a route's ``auth`` replaces the instance's, and a route setting either
    list replaces both (one IP rule per scope). ``allow: all`` is no allow list at all."""
    out = dict(inherited or {})
    if "auth" in raw:
        out["auth"] = _auth(raw["auth"])
    if "allow" in raw or "deny" in raw:
        allow, deny = raw.get("allow", []), raw.get("deny", [])
        out["allow"] = () if "all" in allow else _networks(allow)
        out["deny"] = ("0.0.0.0/0", "::/0") if "all" in deny else _networks(deny)
    return out


def _header_rules(raw: dict | None) -> HeaderRules | None:
    if raw is None:
        return None
    return HeaderRules(
        set=tuple((name, value) for name, value in (raw.get("set") or {}).items()),
        add=tuple((name, value) for name, values in (raw.get("add") or {}).items()
                  for value in values),
        remove=tuple(name.lower() for name in raw.get("remove", ())))


def _rules(raw: dict) -> Rules:
    """The front-door keys one level of the file sets (``Rules``)."""
    options = _present(raw, ("security_headers", "intercept_errors", "trailing_slash"))
    headers = raw.get("headers") or {}
    cors = raw.get("cors")
    if isinstance(cors, dict):
        cors = dict(cors)
        cors["origins"] = tuple(o if o == "*" else o.lower().rstrip("/")
                                for o in cors["origins"])
        for key in ("methods", "headers", "expose"):
            if key in cors:
                cors[key] = tuple(cors[key])
        if "max_age" in cors:
            cors["max_age"] = int(cors["max_age"])
        cors = Cors(**cors)
    pages = tuple((str(status).lower(), page) for status, page in
                  (raw.get("error_pages") or {}).items())
    return Rules(request_headers=_header_rules(headers.get("request")),
                 response_headers=_header_rules(headers.get("response")),
                 cors=cors, error_pages=pages, **options)


def _route(raw: dict, index: int, line: int, timeouts: Timeouts,
           static: StaticOptions, inherited: dict | None = None) -> Route:
    options = _present(raw, ("strip_prefix", "preserve_host", "priority", "retries", "pool",
                             "buffer_requests", "buffer_responses", "rewrite",
                             "max_in_flight"))
    options["rules"] = _rules(raw)
    if "rate_limit" in raw:
        options["rate_limit"] = _rate_limit(raw["rate_limit"])
    destination = raw.get("destination")
    if destination is None:
        options["redirect"] = Redirect(**raw["redirect"])
    elif isinstance(destination, str) and destination.strip().startswith("wsgi:"):
        options["wsgi"] = destination.strip()[len("wsgi:"):]
    elif isinstance(destination, str) and destination.startswith(STATIC_PREFIX):
        options["static"] = destination[len(STATIC_PREFIX):]  # made absolute by the validator
        options["static_options"] = replace(static, **_static_options(raw.get("static", {})))
    else:
        entries = destination if isinstance(destination, list) else [destination]
        options["upstreams"] = tuple(_upstream(e, raw.get("tls")) for e in entries)
    options.update(_access(raw, inherited))
    if "methods" in raw:
        options["methods"] = frozenset(raw["methods"])
    if "balance" in raw:
        options["balance"] = _balance(raw["balance"])
    check = raw.get("health_check")
    if check:  # `health_check: true` probes with the defaults
        options["health_check"] = HealthCheck(**check) if isinstance(check, dict) else HealthCheck()
    return Route(path=raw["path"], index=index, line=line,
                 timeouts=replace(timeouts, **raw.get("timeouts", {})), **options)


def _rate_limit(raw: dict) -> RateLimit:
    count, period = parse_rate(raw["rate"])
    key = raw.get("key", "client_ip")
    if key.startswith("header:"):  # field names are case-insensitive: one spelling
        key = "header:" + key[len("header:"):].strip().lower()
    return RateLimit(count, period, raw.get("burst", count), key)


def _balance(name: str) -> str:
    # weights are honoured by round_robin itself, so "weighted" names the same balancer
    return "round_robin" if name == "weighted" else name


def _instance(raw: dict, index: int, lines: dict, timeouts: Timeouts,
              inherited: Rules) -> Instance:
    where = ("server", "instances", index)
    options = _present(raw, ("host", "public", "max_in_flight", "http2"))
    if "rate_limit" in raw:
        options["rate_limit"] = _rate_limit(raw["rate_limit"])
    redirect = raw.get("redirect_https", False)
    if redirect is not False:  # a port number, or true: the port is found once all are built
        options["redirect_https"] = True
        options["https_ports"] = () if redirect is True else (((), redirect),)
    tls = raw.get("tls") or raw.get("sslConfig")
    if tls:
        options["tls"] = TLS(cert=tls["cert"], key=tls["key"])
    static = StaticOptions(**_static_options(raw.get("static", {})))
    access = _access(raw)
    routes = tuple(_route(r, n, _line_of(lines, (*where, "routes", n)), timeouts, static, access)
                   for n, r in enumerate(raw.get("routes") or []))
    return Instance(index=index, port=raw["port"], line=_line_of(lines, where), routes=routes,
                    server_names=tuple(raw.get("server_names", ())),
                    static=static, rules=_rules(raw), inherited=inherited, **access,
                    **options)


def _static_options(raw: dict) -> dict:
    static = dict(raw)
    if "index" in static:
        static["index"] = tuple(static["index"])
    if "fallback" in static:
        static["fallback"] = static["fallback"].lstrip("/")
    return static


def _redirect_bare_http(instances: tuple[Instance, ...], raw: list[dict],
                        global_pool: bool) -> tuple[Instance, ...]:
    """The original's port 80 next to an HTTPS port 443: it only redirects there.

    A port-80 instance with nothing of its own to serve (no routes, no
    ``public``, no global ``upstream``) would show the welcome page; when an
    instance serves TLS on 443 it redirects to https instead (308), unless
    ``redirect_https`` is set either way. An instance that serves something
    keeps serving it over plain HTTP: redirecting it needs ``redirect_https: true``.
    """
    if global_pool or not any(i.tls and i.port == 443 for i in instances):
        return instances
    return tuple(
        replace(i, redirect_https=True)
        if i.port == 80 and not i.tls and not i.routes and not i.public
        and "redirect_https" not in raw[i.index] else i
        for i in instances)


def _https_ports(instances: tuple[Instance, ...]) -> tuple[Instance, ...]:
    """Where each ``redirect_https: true`` instance sends its clients.

    To the TLS instances reachable at the same address (same host, or either
    binds a wildcard), as (server_names, port) in file order: the request's
    Host then picks one the way a TLS listener picks its site (exact name,
    wildcard, the first without names, the first). With none, to 443.
    """
    with_tls = [i for i in instances if i.tls]
    out = []
    for inst in instances:
        if inst.redirect_https and not inst.https_ports:
            ports = tuple((i.server_names, i.port) for i in with_tls
                          if _overlap(i.host, inst.host))
            inst = replace(inst, https_ports=ports or (((), 443),))
        out.append(inst)
    return tuple(out)


def _compress_scope(raw: bool | dict | None, outer: tuple[bool, dict]) -> tuple[bool, dict]:
    """One scope's ``compress`` over its enclosing scope's: (on, settings so far).

    Absent: as the enclosing scope. true/false: switches it, keeping the
    settings. A mapping turns it on and overrides the settings key by key
    (a level per algorithm, too).
    """
    if raw is None:
        return outer
    if isinstance(raw, bool):
        return raw, outer[1]
    settings = {**outer[1], **_present(raw, ("min_length",))}
    if "algorithms" in raw:
        settings["algorithms"] = tuple(dict.fromkeys(raw["algorithms"]))
    if "types" in raw:
        settings["types"] = tuple(raw["types"])
    level = raw.get("level")
    if isinstance(level, int):
        settings["gzip_level"] = settings["br_level"] = level
    elif level:
        settings.update({f"{name}_level": value for name, value in level.items()})
    return True, settings


def _compression(scope: tuple[bool, dict]) -> Compression | None:
    on, settings = scope
    if not on:
        return None
    if "algorithms" not in settings and not brotli_installed():
        settings = {**settings, "algorithms": ("gzip",)}  # br needs its package (README)
    return Compression(**settings)


def _with_compression(doc: dict, instances: tuple[Instance, ...]) -> tuple[Instance, ...]:
    """Each instance and route with its resolved ``compress`` (the nearest scope wins)."""
    top = _compress_scope(doc.get("compress"), (False, {}))
    out = []
    for inst, raw in zip(instances, doc["server"]["instances"], strict=True):
        scope = _compress_scope(raw.get("compress"), top)
        routes = tuple(replace(route, compress=_compression(_compress_scope(r.get("compress"),
                                                                            scope)))
                       for route, r in zip(inst.routes, raw.get("routes") or (), strict=True))
        out.append(replace(inst, compress=_compression(scope), routes=routes))
    return tuple(out)


def _logging(raw: dict) -> Logging:
    options = dict(raw)
    if options.get("access", "stdout") in ("off", False, None):
        options["access"] = None
    return Logging(**options)


def _build(doc: dict, lines: dict, path: str, digest: str) -> Config:
    timeouts = Timeouts(**doc.get("timeouts", {}))
    options = _present(doc, ("graceful_timeout", "timeout", "max_requests",
                             "max_requests_jitter", "reuse_port", "monkey_patch", "user",
                             "group"))
    if "upstream_balance" in doc:
        options["upstream_balance"] = _balance(doc["upstream_balance"])
    if "workers" in doc:
        options["workers"] = _usable_cpus() if doc["workers"] == "auto" else doc["workers"]
    if "admin" in doc:
        options["admin"] = Admin(**doc["admin"])
    raw_instances = doc["server"]["instances"]
    rules = _rules(doc)
    instances = tuple(_instance(raw, i, lines, timeouts, rules)
                      for i, raw in enumerate(raw_instances))
    instances = _with_compression(doc, instances)
    upstream = tuple(_upstream(e) for e in doc.get("upstream") or ())
    return Config(
        path=path, digest=digest, timeouts=timeouts,
        instances=_https_ports(_redirect_bare_http(instances, raw_instances, bool(upstream))),
        upstream=upstream,
        limits=Limits(**doc.get("limits", {})),
        buffering=Buffering(**doc.get("buffering", {})),
        logging=_logging(doc.get("logging", {})),
        trusted_proxies=tuple(str(ipaddress.ip_network(c, strict=False))
                              for c in doc.get("trusted_proxies", ())),
        pythonpath=tuple(doc.get("pythonpath", ())),
        rules=rules,
        compress=_compression(_compress_scope(doc.get("compress"), (False, {}))),
        rate_limits=RateLimits(**doc.get("rate_limits", {})),
        **options,
    )
