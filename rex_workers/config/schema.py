"""The one schema of ``rex.config.yaml``, as data, and the Validator that knows Rex's values.

May: describe every key (unknown keys are errors at every level), coerce the human
spellings ("10m", "30s", "get", a lone string for a list) into plain values, check one
value at a time (destinations, route patterns, CIDRs, paths that must exist), and word
Cerberus errors for people. May not: read the YAML file, know line numbers, build model
objects, or import gevent. Cross-instance rules (shared ports) live in ``config.py``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import cerberus
from cerberus import errors

from .model import Upstream

DEFAULT_PORTS = {"http": 80, "https": 443}
BALANCERS = ("round_robin", "weighted", "least_conn", "ip_hash", "random")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
STREAMS = ("stdout", "stderr")

# --------------------------------------------------------------------------- schema

BOOL = {"type": "boolean"}
SECONDS = {"type": "duration", "coerce": "duration", "check_with": "positive"}
SIZE = {"type": "size", "coerce": "size", "check_with": "positive"}
PORT = {"type": "integer", "min": 1, "max": 65535}
HOST = {"type": "string", "check_with": "host"}
BALANCE = {"type": "string", "allowed": BALANCERS}


def _count(minimum: int) -> dict:
    return {"type": "integer", "min": minimum}


def _list_of(item: dict) -> dict:
    """A list that also takes a lone value (``server_names: example.com``)."""
    return {"type": "list", "coerce": "listify", "schema": item}


UPSTREAM = {
    "url": {"type": "string", "required": True, "check_with": "url"},
    "weight": _count(1),
    "backup": BOOL,
    "max_fails": _count(0),  # 0 turns passive health off for this upstream (nginx)
    "fail_timeout": SECONDS,
}
# One entry of a destination list or of the global `upstream`: "host:port", a URL, a mapping.
UPSTREAM_ENTRY = {"type": ["string", "dict"], "check_with": "upstream", "schema": UPSTREAM}

TIMEOUTS = {"connect": SECONDS, "read": SECONDS, "header": SECONDS, "idle": SECONDS}

ROUTE = {
    "path": {"type": "string", "required": True, "check_with": "route_path"},
    "destination": {
        "type": ["string", "list"],
        "required": True,
        "empty": False,
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
}

TLS = {
    "cert": {"type": "string", "required": True, "coerce": "path", "check_with": "file"},
    "key": {"type": "string", "required": True, "coerce": "path", "check_with": "file"},
}

STATIC = {
    "index": _list_of({"type": "string", "empty": False, "check_with": "file_name"}),
    "fallback": {"type": "string", "empty": False, "check_with": "relative_file"},
    "cache_control": {"type": "string", "empty": False, "check_with": "header_value"},
    "precompressed": BOOL,
    "listing": BOOL,
    "follow_symlinks": BOOL,
    "dotfiles": BOOL,
}

INSTANCE = {
    "port": {**PORT, "required": True},
    "host": HOST,
    "public": {"type": "string", "empty": False, "coerce": "path", "check_with": "directory"},
    # routes/upstream may be present with every entry commented out, as in the starter file
    "routes": {"type": "list", "nullable": True, "schema": {"type": "dict", "schema": ROUTE}},
    "sslConfig": {"type": "dict", "schema": TLS},  # the original's spelling
    "tls": {"type": "dict", "schema": TLS, "excludes": "sslConfig"},
    "server_names": _list_of({"type": "string", "coerce": "lower", "check_with": "server_name"}),
    "redirect_https": {**BOOL, "check_with": "redirect_https"},
    "static": {"type": "dict", "schema": STATIC},
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
        "schema": {"header_bytes": SIZE, "body_bytes": SIZE, "connections": _count(1)},
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
}

# ------------------------------------------------------------------ value parsers

_SIZE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}  # binary, like nginx
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?",
                       re.IGNORECASE)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 tchar
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_WSGI = re.compile(rf"wsgi:({_DOTTED}):([A-Za-z_]\w*(?:\(\))?)")


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


def valid_host(host: str) -> bool:
    """A DNS name or an IP literal (IPv6 without brackets)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return len(host) <= 253 and _HOSTNAME.fullmatch(host) is not None


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
    url = text if "://" in text else f"http://{text}"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"unsupported scheme {parts.scheme}:// (use http://, https:// or wsgi:)")
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


def route_path_problem(path: str) -> str | None:
    """Why ``path`` is not a route pattern (SPEC §4), or None when it is one."""
    if not path.startswith("/"):
        return 'must start with "/"'
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in path):
        return "must not contain spaces or control characters"
    segments = path.split("/")[1:]
    if "" in segments[:-1]:
        return "must not contain an empty segment (//)"
    if "." in segments or ".." in segments:
        return "must not contain . or .. segments (requests are matched after resolving them)"
    if any("**" in s and s != "**" for s in segments):  # "a**b" would only mean "a*b"
        return "** must be a whole segment (/a/**/b)"
    return None


# ---------------------------------------------------------------------- validator


class RexValidator(cerberus.Validator):
    """Cerberus plus Rex's value types. Pass ``base_dir=`` (the config file's directory).

    ``errors`` is a list of ``(document path, message)`` (see ``Problems``).
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("error_handler", Problems)  # child validators bring their own
        super().__init__(*args, **kwargs)

    types_mapping = {
        **cerberus.Validator.types_mapping,
        # YAML true is a Python int; a port or a count must not accept it
        "integer": cerberus.TypeDefinition("integer", (int,), (bool,)),
        "duration": cerberus.TypeDefinition("duration", (int, float), (bool,)),
        "size": cerberus.TypeDefinition("size", (int,), (bool,)),
    }

    # -- coercers: never raise; a value they cannot read is left for the type rule to report

    def _normalize_coerce_duration(self, value):
        seconds = parse_duration(value)
        return value if seconds is None else seconds

    def _normalize_coerce_size(self, value):
        size = parse_size(value)
        return value if size is None else size

    def _normalize_coerce_listify(self, value):
        return [value] if isinstance(value, (str, dict)) else value

    def _normalize_coerce_methods(self, value):
        value = self._normalize_coerce_listify(value)
        if isinstance(value, list):
            return [m.upper() if isinstance(m, str) else m for m in value]
        return value

    def _normalize_coerce_lower(self, value):
        return value.lower() if isinstance(value, str) else value

    def _normalize_coerce_path(self, value):
        """Relative paths are relative to the config file, not to the working directory."""
        if not isinstance(value, str) or not value:
            return value
        base = self._config.get("base_dir") or os.getcwd()
        return os.path.normpath(os.path.join(base, os.path.expanduser(value)))

    def _normalize_coerce_log_target(self, value):
        if value in STREAMS or value in ("off", ""):
            return value
        return self._normalize_coerce_path(value)

    # -- single-value checks: they see only values of their field's type

    def _validate_check_with(self, checks, field, value):
        # Cerberus runs check_with on None after the nullable rule has reported it (or
        # allowed it); every checker would have to repeat the test.
        if value is not None:
            super()._validate_check_with(checks, field, value)

    _validate_check_with.__doc__ = cerberus.Validator._validate_check_with.__doc__

    def _check_with_positive(self, field, value):
        if isinstance(value, (int, float)) and value <= 0:
            self._error(field, "must be greater than 0")

    def _check_with_workers(self, field, value):
        if value == "auto":
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self._error(field, "must be a whole number >= 1 or auto")

    def _check_with_host(self, field, value):
        if not valid_host(value):
            self._error(field, f"not an IP address or host name: {value!r}")

    def _check_with_server_name(self, field, value):
        name = value[2:] if value.startswith("*.") else value
        if not valid_host(name):
            self._error(field, f"not a host name: {value!r}")

    def _check_with_cidr(self, field, value):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            self._error(field, f"not an IP address or CIDR block: {value!r}")

    def _check_with_token(self, field, value):
        if not _TOKEN.fullmatch(value):
            self._error(field, f"not an HTTP method: {value!r}")

    def _check_with_route_path(self, field, value):
        problem = route_path_problem(value)
        if problem:
            self._error(field, problem)

    def _check_with_probe_path(self, field, value):
        if not value.startswith("/") or any(c.isspace() for c in value):
            self._error(field, 'must be a request path starting with "/"')

    def _check_with_destination(self, field, value):
        if isinstance(value, str):
            if value.strip().startswith("wsgi:"):
                if not _WSGI.fullmatch(value.strip()):
                    self._error(field, f"invalid WSGI target {value!r} (expected "
                                       "wsgi:package.module:app or wsgi:module:factory())")
            else:
                self._check_with_url(field, value)

    def _check_with_upstream(self, field, value):
        if isinstance(value, str):
            if value.strip().startswith("wsgi:"):
                self._error(field, "a wsgi: destination must be a route's only destination")
            else:
                self._check_with_url(field, value)

    def _check_with_url(self, field, value):
        try:
            parse_destination(value)
        except ValueError as exc:
            self._error(field, str(exc))

    def _check_with_wsgi_only(self, field, value):
        destination = self.document.get("destination")
        if not (isinstance(destination, str) and destination.strip().startswith("wsgi:")):
            self._error(field, "pool is only for wsgi: destinations")

    def _check_with_redirect_https(self, field, value):
        if value and ("tls" in self.document or "sslConfig" in self.document):
            self._error(field, "an instance with TLS cannot redirect to HTTPS (itself)")

    def _check_with_directory(self, field, value):
        name = f"{field} " if isinstance(field, str) else ""  # list items have no name
        if not os.path.exists(value):
            self._error(field, f"{name}directory not found: {value}")
        elif not os.path.isdir(value):
            self._error(field, f"{name}path is not a directory: {value}")

    def _check_with_file(self, field, value):
        if not os.path.isfile(value):
            self._error(field, f"{field} file not found: {value}")

    def _check_with_file_name(self, field, value):
        if "/" in value or value in (".", ".."):
            self._error(field, f"must be a file name, not a path: {value!r}")

    def _check_with_relative_file(self, field, value):
        if ".." in value.split("/") or "\0" in value:
            self._error(field, f"must be a file inside public: {value!r}")

    def _check_with_header_value(self, field, value):
        # RFC 9110 §5.5: a field value may hold tabs but no other control characters
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
            self._error(field, "must not contain control characters")

    def _check_with_log_target(self, field, value):
        if field == "access" and value in ("off", False):
            return
        if not isinstance(value, str) or value in ("", "off"):
            extra = ", stderr or off" if field == "access" else " or stderr"
            self._error(field, f"must be a file path, stdout{extra}")
        elif value not in STREAMS and not os.path.isdir(os.path.dirname(value)):
            self._error(field, f"log directory not found: {os.path.dirname(value)}")


# ------------------------------------------------------------------ error wording

_TYPE_WORDS = {
    "integer": "a whole number",
    "boolean": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping",
    "duration": "a duration (seconds, or like 500ms, 30s, 5m, 1h)",
    "size": "a size (bytes, or like 512k, 10m, 1g)",
}


def _type_message(error) -> str:
    names = [error.constraint] if isinstance(error.constraint, str) else error.constraint
    return "must be " + " or ".join(_TYPE_WORDS.get(n, n) for n in names)


_MESSAGES = {
    errors.REQUIRED_FIELD.code: lambda e: "required field",
    errors.UNKNOWN_FIELD.code: lambda e: "unknown field" + _hint(e.document_path),
    errors.EXCLUDES_FIELD.code: lambda e: f"cannot be used together with {e.constraint}",
    errors.EMPTY_NOT_ALLOWED.code: lambda e: "must not be empty",
    errors.NOT_NULLABLE.code: lambda e: "has no value",
    errors.BAD_TYPE.code: _type_message,
    errors.MIN_VALUE.code: lambda e: f"must be at least {e.constraint}",
    errors.MAX_VALUE.code: lambda e: f"must be at most {e.constraint}",
    errors.UNALLOWED_VALUE.code: lambda e: f"must be one of {', '.join(e.constraint)}"
                                           f" (not {e.value!r})",
    errors.CUSTOM.code: lambda e: e.info[0],
}


class Problems(cerberus.errors.BaseErrorHandler):
    """Cerberus errors as ``(document path, message)`` pairs: ``validator.errors`` with this."""

    def __call__(self, error_list) -> list[tuple[tuple, str]]:
        leaves = _leaves(error_list)
        # A misspelt required key is both unknown and missing; the hint says it all.
        hinted = {(*e.document_path[:-1], _suggest(e.document_path)) for e in leaves
                  if e.code == errors.UNKNOWN_FIELD.code}
        return [(e.document_path, _message(e)) for e in leaves
                if not (e.code == errors.REQUIRED_FIELD.code and e.document_path in hinted)]


def _leaves(error_list) -> list:
    """Cerberus nests the errors of sub-documents in group errors; people want the leaves."""
    leaves = []
    for error in error_list:
        if error.is_group_error:
            leaves.extend(_leaves(error.child_errors))
        else:
            leaves.append(error)
    return leaves


def _message(error) -> str:
    word = _MESSAGES.get(error.code)
    if word:
        return word(error)
    return cerberus.errors.BasicErrorHandler.messages.get(error.code, "invalid value").format(
        *error.info, constraint=error.constraint, field=error.field, value=error.value)


def allowed_keys(path: Sequence) -> list[str]:
    """The keys the schema allows in the mapping at ``path`` (a document path)."""
    rules: dict = {"type": "dict", "schema": SCHEMA}
    for part in path:
        inner = rules.get("schema")
        if not isinstance(inner, dict):
            return []
        rules = inner if isinstance(part, int) else inner.get(part, {})
    fields = rules.get("schema")
    return list(fields) if isinstance(fields, dict) else []


def _suggest(path: Sequence) -> str | None:
    """The allowed key closest to the unknown one at ``path``, ignoring case."""
    if not isinstance(path[-1], str):
        return None
    allowed = {k.lower(): k for k in allowed_keys(path[:-1])}
    close = difflib.get_close_matches(path[-1].lower(), list(allowed), n=1, cutoff=0.6)
    return allowed[close[0]] if close else None


def _hint(path: Sequence) -> str:
    suggestion = _suggest(path)
    return f", did you mean {suggestion}?" if suggestion else ""
