"""The effective config as a document in the file's own shape: what ``rex config`` prints.

The inverse of the loader: every key a ``Config`` holds, defaults included,
so a person sees what Rex will do (Caddy's ``adapt`` idea), and a document
that loads back into an equal ``Config`` (the tests hold it to that). Values
come out resolved: ``workers: auto`` as the number it stands for, relative
paths as absolute ones, sizes in bytes, durations in seconds, ``sslConfig``
as ``tls``. Keys whose default is "none" (``public``, ``tls``, ``admin``,
``pool``, ``fallback``…) appear only when set; options that only mean
something for one kind of destination appear only on routes of that kind.

Pure: model objects in, plain data out; no YAML, no I/O, no gevent.
"""

from __future__ import annotations

from dataclasses import asdict, fields

from .model import (
    BasicAuth,
    Compression,
    Config,
    ForwardAuth,
    HeaderRules,
    Instance,
    RateLimit,
    Route,
    Rules,
    Upstream,
)
from .schema import STATIC_PREFIX

# Route options that mean something only where requests are proxied.
_PROXY_ONLY = ("strip_prefix", "preserve_host", "balance", "health_check", "retries",
               "timeouts", "buffer_requests", "buffer_responses")


def dump(config: Config) -> dict:
    """``config`` as a config document (plain dicts, lists, str, int, float, bool)."""
    doc: dict = {"server": {"instances": [_instance(i) for i in config.instances]}}
    doc["upstream"] = [_upstream(u) for u in config.upstream]
    doc["upstream_balance"] = config.upstream_balance
    doc["workers"] = config.workers
    doc["timeouts"] = asdict(config.timeouts)
    doc["limits"] = asdict(config.limits)
    doc["buffering"] = _set(asdict(config.buffering))
    logging = asdict(config.logging)
    logging["access"] = logging["access"] or "off"
    doc["logging"] = logging
    if config.admin is not None:
        doc["admin"] = asdict(config.admin)
    for name in ("graceful_timeout", "timeout", "max_requests", "max_requests_jitter",
                 "reuse_port"):
        doc[name] = getattr(config, name)
    doc["trusted_proxies"] = list(config.trusted_proxies)
    doc["monkey_patch"] = config.monkey_patch
    doc["pythonpath"] = list(config.pythonpath)
    doc.update(_rules(config.rules))
    doc["compress"] = _compress(config.compress)
    doc["rate_limits"] = asdict(config.rate_limits)
    doc.update(_set({"user": config.user, "group": config.group}))
    return doc


def _rules(rules: Rules) -> dict:
    """The front-door keys a level sets (none of them has a default to show)."""
    out: dict = {}
    headers = {direction: _header_rules(r) for direction, r in
               (("request", rules.request_headers), ("response", rules.response_headers))
               if r is not None}
    if headers:
        out["headers"] = headers
    for name in ("security_headers", "intercept_errors", "trailing_slash"):
        if getattr(rules, name) is not None:
            out[name] = getattr(rules, name)
    cors = rules.cors
    if cors is not None:
        out["cors"] = cors if isinstance(cors, bool) else _set(
            {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cors).items()})
    if rules.error_pages:
        out["error_pages"] = {int(k) if k.isdigit() else k: v for k, v in rules.error_pages}
    return out


def _header_rules(rules: HeaderRules) -> dict:
    add: dict = {}
    for name, value in rules.add:
        add.setdefault(name, []).append(value)
    return {"set": dict(rules.set), "add": add, "remove": list(rules.remove)}


def _compress(settings: Compression | None) -> bool | dict:
    """A scope's resolved ``compress``: false, or every setting."""
    if settings is None:
        return False
    return {"algorithms": list(settings.algorithms), "min_length": settings.min_length,
            "level": {"gzip": settings.gzip_level, "br": settings.br_level},
            "types": list(settings.types)}


_PERIODS = {1.0: "s", 60.0: "m", 3600.0: "h"}


def _limits(holder: Instance | Route) -> dict:
    """``rate_limit`` and ``max_in_flight`` where set (none is the default)."""
    limit: RateLimit | None = holder.rate_limit
    rate = limit and {"rate": f"{limit.count}/{_PERIODS[limit.period]}", "burst": limit.burst,
                      "key": limit.key}
    return _set({"rate_limit": rate, "max_in_flight": holder.max_in_flight})


def _set(values: dict) -> dict:
    """Without the keys whose value is None: "not set" has no spelling in the file."""
    return {k: v for k, v in values.items() if v is not None}


def _instance(inst: Instance) -> dict:
    out: dict = {"port": inst.port, "host": inst.host}
    if inst.public:
        out["public"] = inst.public
    out["server_names"] = list(inst.server_names)
    if inst.tls is not None:
        out["tls"] = {"cert": inst.tls.cert, "key": inst.tls.key}
    out["redirect_https"] = _redirect(inst)
    out["http2"] = inst.http2
    static = _set(asdict(inst.static))
    static["index"] = list(inst.static.index)
    out["static"] = static
    out.update(_access(inst))
    out["compress"] = _compress(inst.compress)
    out["routes"] = [{**_route(r), **_access(r, inst)} for r in inst.routes]
    out.update(_rules(inst.rules))
    out.update(_limits(inst))
    return out


def _access(scope: Instance | Route, instance: Instance | None = None) -> dict:
    """``auth``, ``allow``, ``deny`` as written; on a route only where they differ from
    its instance's (``auth: false``, ``allow: [all]`` say "not the instance's")."""
    out: dict = {}
    if scope.auth != (instance.auth if instance else None):
        out["auth"] = _auth(scope.auth) if scope.auth else False
    rule = (scope.allow, scope.deny)
    if rule != ((instance.allow, instance.deny) if instance else ((), ())):
        if scope.allow or not scope.deny:
            out["allow"] = list(scope.allow) or ["all"]
        if scope.deny:
            out["deny"] = list(scope.deny)
    return out


def _auth(auth: BasicAuth | ForwardAuth) -> dict:
    if isinstance(auth, ForwardAuth):
        return {"forward": {"url": auth.url, "copy_headers": list(auth.copy_headers)}}
    basic: dict = {"realm": auth.realm}
    if auth.htpasswd:
        basic["htpasswd"] = auth.htpasswd
    else:
        basic["users"] = dict(auth.users)
    return {"basic": basic}


def _redirect(inst: Instance) -> bool | int:
    """``redirect_https`` as written: one port for every host is the same as that port."""
    ports = inst.https_ports
    if inst.redirect_https and len(ports) == 1 and not ports[0][0]:
        return ports[0][1]
    return inst.redirect_https


def _route(route: Route) -> dict:
    out: dict = {"path": route.path}
    if route.wsgi:
        out["destination"] = f"wsgi:{route.wsgi}"
    elif route.static:
        out["destination"] = STATIC_PREFIX + route.static
        static = _set(asdict(route.static_options))
        static["index"] = list(route.static_options.index)
        out["static"] = static
    elif route.redirect is not None:
        out["redirect"] = asdict(route.redirect)
    else:
        out["destination"] = [_upstream(u) for u in route.upstreams]
    out["methods"] = sorted(route.methods) if route.methods is not None else None
    out["priority"] = route.priority
    out["compress"] = _compress(route.compress)
    if route.upstreams:
        for name in _PROXY_ONLY:
            out[name] = getattr(route, name)
        check = route.health_check
        out["health_check"] = asdict(check) if check is not None else False
        out["timeouts"] = {"connect": route.timeouts.connect, "read": route.timeouts.read}
    if route.wsgi and route.pool is not None:
        out["pool"] = route.pool
    out["rewrite"] = route.rewrite
    out.update(_rules(route.rules))
    out.update(_limits(route))
    return _set(out)


def _upstream(up: Upstream) -> dict:
    names = [f.name for f in fields(Upstream) if f.init and f.name not in
             ("scheme", "host", "port", "base_path", "tls")]
    out = {name: getattr(up, name) for name in names}
    if up.tls is not None:
        out["tls"] = _set(asdict(up.tls))
    return out
