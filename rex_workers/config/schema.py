"""The one schema of ``rex.config.yaml``, as data, and the value grammars it names.

May: describe every key (unknown keys are errors at every level) as Cerberus rules, name
the vocabularies a value must come from, and parse the human spellings of sizes, durations,
hosts and destinations into plain values. May not: run Cerberus (``validator.py`` does,
and owns the coercers and checks that the ``coerce``/``check_with`` names here refer to),
read the YAML file, assemble the ``Config`` (``loader.py`` does), or import gevent.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from urllib.parse import urlsplit

from ..proxy.balancer import BALANCERS
from .model import Upstream

DEFAULT_PORTS = {"http": 80, "https": 443}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
STREAMS = ("stdout", "stderr")
STATIC_PREFIX = "static:"  # a route destination serving a directory: static:./assets
CODINGS = ("br", "gzip")  # what `compress.algorithms` may name

# --------------------------------------------------------------------------- schema

BOOL = {"type": "boolean"}
SECONDS = {"type": "duration", "coerce": "duration", "check_with": "positive"}
SIZE = {"type": "size", "coerce": "size", "check_with": "positive"}
PORT = {"type": "integer", "min": 1, "max": 65535}
HOST = {"type": "string", "check_with": "host"}
# The registry's own names: a balancer registered there is configurable at once.
BALANCE = {"type": "string", "allowed": tuple(BALANCERS)}


def _count(minimum: int) -> dict:
    return {"type": "integer", "min": minimum}


def _list_of(item: dict) -> dict:
    """A list that also takes a lone value (``server_names: example.com``)."""
    return {"type": "list", "coerce": "listify", "schema": item}


# How Rex speaks TLS to https:// upstreams: on a route (all its https destinations) or on
# one destination mapping (nearest wins, key by key). Names as nginx's proxy_ssl_* and
# Caddy's transport tls options say them.
PEM_FILE = {"type": "string", "empty": False, "coerce": "path", "check_with": "file"}
UPSTREAM_TLS = {
    "type": "dict",
    "check_with": "upstream_tls",
    "schema": {
        "ca": PEM_FILE,
        "verify": BOOL,
        "server_name": {"type": "string", "coerce": "lower", "check_with": "host"},
        "cert": {**PEM_FILE, "dependencies": "key"},
        "key": {**PEM_FILE, "dependencies": "cert"},
    },
}

# Request-stage limits, on an instance or a route (the route's win): docs/limits.md.
RATE_LIMIT = {
    "type": "dict",
    "schema": {
        "rate": {"type": "string", "required": True, "check_with": "rate"},
        "burst": _count(1),
        "key": {"type": "string", "check_with": "limit_key"},
    },
}
MAX_IN_FLIGHT = _count(1)
STORE_ERRORS = ("local", "allow", "deny")  # what a node does while Redis is unreachable

UPSTREAM = {
    "url": {"type": "string", "required": True, "check_with": "url"},
    "tls": UPSTREAM_TLS,
    "weight": _count(1),
    "backup": BOOL,
    "max_fails": _count(0),  # 0 turns passive health off for this upstream (nginx)
    "fail_timeout": SECONDS,
}
# One entry of a destination list or of the global `upstream`: "host:port", a URL, a mapping.
UPSTREAM_ENTRY = {"type": ["string", "dict"], "check_with": "upstream", "schema": UPSTREAM}

# -- the front door (docs/headers.md): keys taken at the top level, on an instance and on
# a route; the nearest level that sets one wins.


def _header_rules(direction: str) -> dict:
    """``set``/``add``/``remove`` for one direction; names a rule may not touch are refused."""
    name = {"type": "string", "check_with": f"{direction}_header_name"}
    value = {"type": "string", "coerce": "text", "check_with": "header_template"}
    return {
        "type": "dict",
        "schema": {
            "set": {"type": "dict", "keysrules": name, "valuesrules": value},
            "add": {"type": "dict", "keysrules": name,
                    "valuesrules": {"type": "list", "coerce": "listify_text", "schema": value}},
            "remove": _list_of(name),
        },
    }


HEADER_TOKEN = {"type": "string", "check_with": "header_token"}
FRONT_DOOR = {
    "headers": {"type": "dict", "schema": {"request": _header_rules("request"),
                                          "response": _header_rules("response")}},
    "security_headers": BOOL,
    # false turns an outer level's off; a mapping must name the origins
    "cors": {
        "type": ["dict", "boolean"],
        "check_with": "cors",
        "schema": {
            "origins": {**_list_of({"type": "string", "check_with": "origin"}),
                        "required": True, "empty": False},
            "methods": {**_list_of({"type": "string", "check_with": "token"}),
                        "coerce": "methods"},
            "headers": _list_of(HEADER_TOKEN),
            "expose": _list_of(HEADER_TOKEN),
            "credentials": BOOL,
            "max_age": {"type": "duration", "coerce": "duration", "min": 0},
        },
    },
    # 404: errors/404.html, 5xx: errors/5xx.html; relative to the config file
    "error_pages": {
        "type": "dict",
        "keysrules": {"type": ["integer", "string"], "check_with": "error_status"},
        "valuesrules": {"type": "string", "empty": False, "coerce": "path",
                        "check_with": "error_page"},
    },
    "intercept_errors": BOOL,
}
REDIRECT_STATUSES = (301, 302, 303, 307, 308)

TIMEOUTS = {"connect": SECONDS, "read": SECONDS, "header": SECONDS, "idle": SECONDS}

# Access rules (docs/access.md), on an instance and on a route (the route's win).
IP_RULE = {**_list_of({"type": "string", "check_with": "ip_rule"}), "empty": False}
AUTH = {
    "type": ["dict", "boolean"],  # false: a route without its instance's auth
    "check_with": "auth",
    "schema": {
        "basic": {
            "type": "dict",
            "check_with": "basic_auth",
            "schema": {
                "realm": {"type": "string", "empty": False, "check_with": "realm"},
                "users": {"type": "dict", "empty": False,
                          "keysrules": {"type": "string", "check_with": "user_name"},
                          "valuesrules": {"type": "string", "check_with": "password_hash"}},
                "htpasswd": {"type": "string", "empty": False, "coerce": "path",
                             "check_with": "htpasswd", "excludes": "users"},
            },
        },
        "forward": {
            "type": "dict",
            "excludes": "basic",
            "schema": {
                "url": {"type": "string", "required": True, "check_with": "auth_url"},
                "copy_headers": _list_of({"type": "string", "check_with": "copied_field"}),
            },
        },
    },
}
ACCESS = {"auth": AUTH, "allow": IP_RULE, "deny": IP_RULE}


STATIC = {
    "index": _list_of({"type": "string", "empty": False, "check_with": "file_name"}),
    "fallback": {"type": "string", "empty": False, "check_with": "relative_file"},
    "cache_control": {"type": "string", "empty": False, "check_with": "header_value"},
    "precompressed": BOOL,
    "listing": BOOL,
    "follow_symlinks": BOOL,
    "dotfiles": BOOL,
}


# On-the-fly compression (docs/compression.md): true, false, or the settings (which turn
# it on). At the top level, on an instance and on a route; the nearest wins, key by key.
COMPRESS = {
    "type": ["boolean", "dict"],
    "schema": {
        "algorithms": {"type": "list", "coerce": "listify", "empty": False,
                       "check_with": "codings",
                       "schema": {"type": "string", "coerce": "lower", "allowed": CODINGS}},
        "min_length": {"type": "size", "coerce": "size", "min": 0},
        # one level for every algorithm (1-9), or a level per algorithm
        "level": {"type": ["integer", "dict"], "min": 1, "max": 9,
                  "schema": {"gzip": {"type": "integer", "min": 1, "max": 9},
                             "br": {"type": "integer", "min": 0, "max": 11}}},
        "types": {**_list_of({"type": "string", "coerce": "lower", "check_with": "media_range"}),
                  "empty": False},
    },
}

ROUTE = {
    "path": {"type": "string", "required": True, "check_with": "route_path"},
    "destination": {
        "type": ["string", "list"],
        "excludes": "redirect",
        "empty": False,
        "coerce": "destination",  # static:DIR, relative to the config file like every path
        "check_with": "destination",
        "schema": UPSTREAM_ENTRY,  # applies to list items only; strings are checked whole
    },
    "strip_prefix": BOOL,
    "preserve_host": BOOL,
    "methods": {
        "type": "list",
        "coerce": "methods",
        "empty": False,
        "schema": {"type": "string", "check_with": "token"},
    },
    "priority": {"type": "integer"},
    "balance": BALANCE,
    "health_check": {
        "type": ["dict", "boolean"],
        "schema": {
            "path": {"type": "string", "check_with": "probe_path"},
            "interval": SECONDS,
            "timeout": SECONDS,
            "fails": _count(1),
            "passes": _count(1),
        },
    },
    "retries": _count(0),
    "timeouts": {"type": "dict", "schema": {"connect": SECONDS, "read": SECONDS}},
    "pool": {**_count(1), "check_with": "wsgi_only"},
    "buffer_requests": {**BOOL, "check_with": "proxy_only"},
    "buffer_responses": {**BOOL, "check_with": "proxy_only"},
    "tls": UPSTREAM_TLS,
    # instead of a destination: {to: "https://example.com{uri}", status: 301}
    "redirect": {
        "type": "dict",
        "schema": {
            "to": {"type": "string", "required": True, "empty": False,
                   "check_with": "redirect_to"},
            "status": {"type": "integer", "allowed": REDIRECT_STATUSES},
        },
    },
    "rewrite": {"type": "string", "empty": False, "check_with": "rewrite"},
    # a 308 to the path with (add) or without (remove) its trailing slash
    "trailing_slash": {"type": "string", "allowed": ("add", "remove")},
    # a static: route's own options, over the instance's static: (key by key)
    "static": {"type": "dict", "schema": STATIC, "check_with": "static_only"},
    **FRONT_DOOR,
    **ACCESS,
    "compress": COMPRESS,
    "rate_limit": RATE_LIMIT,
    "max_in_flight": MAX_IN_FLIGHT,
}

TLS = {
    "cert": {"type": "string", "required": True, "coerce": "path", "check_with": "file"},
    "key": {"type": "string", "required": True, "coerce": "path", "check_with": "file"},
}

INSTANCE = {
    "port": {**PORT, "required": True},
    "host": HOST,
    "public": {"type": "string", "empty": False, "coerce": "path", "check_with": "directory"},
    # routes/upstream may be present with every entry commented out, as in the starter file
    "routes": {"type": "list", "nullable": True,
               "schema": {"type": "dict", "schema": ROUTE, "check_with": "route"}},
    "sslConfig": {"type": "dict", "schema": TLS},  # the original's spelling
    "tls": {"type": "dict", "schema": TLS, "excludes": "sslConfig"},
    "server_names": _list_of({"type": "string", "coerce": "lower", "check_with": "server_name"}),
    # true: to the TLS instance's port for the request's host; a number: to that port
    "redirect_https": {"type": "https_redirect", "check_with": "redirect_https"},
    # HTTP/2: on TLS instances by ALPN unless false; "cleartext": h2c with prior knowledge
    "http2": {"check_with": "http2"},
    "static": {"type": "dict", "schema": STATIC},
    **ACCESS,
    **FRONT_DOOR,
    "compress": COMPRESS,
    "rate_limit": RATE_LIMIT,
    "max_in_flight": MAX_IN_FLIGHT,
}

SCHEMA = {
    "server": {
        "type": "dict",
        "required": True,
        "schema": {
            "instances": {
                "type": "list",
                "required": True,
                "empty": False,
                "schema": {"type": "dict", "schema": INSTANCE},
            },
        },
    },
    "upstream": {**_list_of(UPSTREAM_ENTRY), "nullable": True},
    "upstream_balance": BALANCE,
    "workers": {"check_with": "workers"},
    "timeouts": {"type": "dict", "schema": TIMEOUTS},
    "limits": {
        "type": "dict",
        "schema": {"header_bytes": SIZE, "request_line_bytes": SIZE, "field_bytes": SIZE,
                   "header_fields": _count(1), "body_bytes": SIZE, "connections": _count(1),
                   "min_rate": {"type": "size", "coerce": "size", "min": 0}},
    },
    "buffering": {
        "type": "dict",
        "schema": {
            "temp_dir": {"type": "string", "empty": False, "coerce": "path",
                         "check_with": "directory"},
            "memory": SIZE,
            "worker_memory": SIZE,
            "max_temp_file": SIZE,
        },
    },
    "logging": {
        "type": "dict",
        "schema": {
            # YAML 1.1 reads a bare `off` as false; both mean "no access log"
            "access": {"type": ["string", "boolean"], "nullable": True,
                       "coerce": "log_target", "check_with": "log_target"},
            "format": {"type": "string", "allowed": ("combined", "json")},
            "error": {"type": ["string", "boolean"], "coerce": "log_target",
                      "check_with": "log_target"},
            "level": {"type": "string", "coerce": "lower", "allowed": LOG_LEVELS},
        },
    },
    "admin": {"type": "dict", "schema": {"port": {**PORT, "required": True}, "host": HOST}},
    "graceful_timeout": {"type": "duration", "coerce": "duration", "min": 0},
    "timeout": SECONDS,
    "max_requests": _count(0),
    "max_requests_jitter": _count(0),
    "reuse_port": BOOL,
    "trusted_proxies": _list_of({"type": "string", "check_with": "cidr"}),
    "monkey_patch": BOOL,
    "pythonpath": _list_of(
        {"type": "string", "empty": False, "coerce": "path", "check_with": "directory"}),
    **FRONT_DOOR,
    "compress": COMPRESS,
    "rate_limits": {
        "type": "dict",
        "schema": {"store": {"type": "string", "check_with": "rate_store"},
                   "on_store_error": {"type": "string", "allowed": STORE_ERRORS}},
    },
    # Workers drop to this account after the master bound the ports (docs/limits.md)
    "user": {"type": ["string", "integer"], "empty": False, "coerce": "account",
             "check_with": "user"},
    "group": {"type": ["string", "integer"], "empty": False, "coerce": "account",
              "check_with": "group", "dependencies": "user"},
}

# ------------------------------------------------------------------ value parsers

_SIZE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}  # binary, like nginx
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_RATE = re.compile(r"(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)", re.IGNORECASE)
_RATE_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?",
                       re.IGNORECASE)


def parse_size(value: object) -> int | None:
    """Bytes from ``16384``, ``"512k"``, ``"10m"``, ``"1g"`` (also ``"10MB"``); None if not one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    return int(match[1]) * _SIZE_UNITS[match[2].lower()] if match else None


def parse_duration(value: object) -> float | None:
    """Seconds from ``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``; None if not one."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        return None
    unit = match[2].lower() if match[2] else None
    return float(match[1]) * _DURATION_UNITS[unit]


def parse_rate(value: object) -> tuple[int, float] | None:
    """(count, period in seconds) from ``"10/s"``, ``"300/m"``, ``"5000/h"``; None if not one."""
    match = _RATE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match or int(match[1]) < 1:
        return None
    return int(match[1]), _RATE_PERIODS[match[2][0].lower()]


def valid_host(host: str) -> bool:
    """A DNS name or an IP literal (IPv6 without brackets)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return len(host) <= 253 and _HOSTNAME.fullmatch(host) is not None


def brotli_installed() -> bool:
    """Whether the optional ``brotli`` package is there (looked up, not imported)."""
    return importlib.util.find_spec("brotli") is not None


def parse_destination(text: str) -> Upstream:
    """One proxy address: ``http(s)://host[:port][/base]`` or a bare ``host[:port]`` (http).

    Raises ValueError with a message fit for a config error. The base path loses its
    trailing slash: it replaces the matched route prefix, nginx ``proxy_pass`` style.
    """
    text = text.strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"a destination cannot be empty or contain spaces: {text!r}")
    if text.startswith("wsgi:"):
        raise ValueError(f"{text} is a WSGI app, not a network address")
    if text.startswith("static:"):
        raise ValueError(f"{text} is a directory, not a network address")
    url = text if "://" in text else f"http://{text}"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"unsupported scheme {parts.scheme}:// "
                         "(use http://, https://, wsgi: or static:)")
    if "?" in url or "#" in url:
        raise ValueError(f"a destination cannot have a query or fragment: {text}")
    if "@" in parts.netloc:
        raise ValueError(f"credentials in a destination are not supported: {text}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"invalid port in {text} (must be 1-65535)")
    host = parts.hostname or ""
    if not valid_host(host):
        raise ValueError(f"invalid host in destination {text}")
    return Upstream(url=url, scheme=scheme, host=host, port=port or DEFAULT_PORTS[scheme],
                    base_path=parts.path.rstrip("/"))


def parse_auth_url(text: str) -> tuple[Upstream, str]:
    """A forward-auth service: its address as an upstream, and the request target to send.

    Unlike a destination, the URL may carry a query (``/api/verify?rd=https://login``),
    which is sent as written. Raises ValueError with a message fit for a config error.
    """
    parts = urlsplit(text.strip())
    if parts.scheme.lower() not in DEFAULT_PORTS or not parts.netloc:
        raise ValueError(f"must be an http:// or https:// URL: {text!r}")
    if parts.fragment or any(c.isspace() for c in text.strip()):
        raise ValueError(f"an auth URL cannot have a fragment or spaces: {text!r}")
    up = parse_destination(f"{parts.scheme}://{parts.netloc}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return up, target
