"""Cerberus with Rex's values: the Validator that runs ``schema.SCHEMA`` and words its errors.

May: coerce the human spellings ("10m", "30s", "get", a lone string for a list) into plain
values, check one value at a time (destinations, route patterns, CIDRs, paths that must
exist), and turn Cerberus errors into ``(document path, message)`` pairs people can act on
(did-you-mean hints from the schema's allowed keys). May not: define keys (``schema.py``
does), read the YAML file, know line numbers, build model objects, or import gevent.
Cross-instance rules (shared ports, duplicate routes) live in ``loader.py``.
"""

from __future__ import annotations

import difflib
import grp
import ipaddress
import os
import pwd
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import cerberus
from cerberus import errors

from .frontchecks import FrontDoorChecks
from .htpasswd import hash_problem, read_htpasswd, user_problem
from .pemfiles import client_files_problem
from .routing import pattern_error
from .schema import (
    SCHEMA,
    STATIC_PREFIX,
    STREAMS,
    brotli_installed,
    parse_auth_url,
    parse_destination,
    parse_duration,
    parse_rate,
    parse_size,
    valid_host,
)

_MEDIA_RANGE = re.compile(r"[a-z0-9!#$&^_.+*-]+/[a-z0-9!#$&^_.+*-]+")  # tokens, * as a wildcard
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 tchar
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
# Fields that frame or route the request: an auth service's answer may not set them.
_NOT_COPIED = frozenset({"host", "content-length", "transfer-encoding", "connection",
                         "keep-alive", "te", "trailer", "upgrade", "expect"})
_WSGI = re.compile(rf"wsgi:({_DOTTED}):([A-Za-z_]\w*(?:\(\))?)")
# ---------------------------------------------------------------------- validator


class RexValidator(FrontDoorChecks, cerberus.Validator):
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
        "https_redirect": cerberus.TypeDefinition("https_redirect", (bool, int), ()),
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

    def _normalize_coerce_text(self, value):
        """A header value written as a number or a YAML boolean is its text."""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value) if isinstance(value, (int, float)) else value

    def _normalize_coerce_listify_text(self, value):
        value = self._normalize_coerce_listify(value)
        if isinstance(value, (int, float)):
            value = [value]
        return [self._normalize_coerce_text(v) for v in value] if isinstance(value, list) \
            else value

    def _normalize_coerce_lower(self, value):
        return value.lower() if isinstance(value, str) else value

    def _normalize_coerce_path(self, value):
        """Relative paths are relative to the config file, not to the working directory."""
        if not isinstance(value, str) or not value:
            return value
        base = self._config.get("base_dir") or os.getcwd()
        return os.path.normpath(os.path.join(base, os.path.expanduser(value)))

    def _normalize_coerce_destination(self, value):
        """``static:DIR`` holds a path: made absolute here like ``public``."""
        if isinstance(value, str) and value.strip().startswith(STATIC_PREFIX):
            directory = value.strip()[len(STATIC_PREFIX):].strip()
            return STATIC_PREFIX + (self._normalize_coerce_path(directory) or "")
        return value

    def _normalize_coerce_account(self, value):
        """A uid or gid may be written as a number (containers without a passwd entry)."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

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
        problem = pattern_error(value)
        if problem:
            self._error(field, problem)

    def _check_with_route(self, field, value):
        # A misspelt key gets its own "did you mean" line; this one would only repeat it.
        if "destination" not in value and "redirect" not in value and not (
                set(value) - set(allowed_keys((*self.document_path, field)))):
            self._error(field, "a route needs a destination or a redirect")

    def _check_with_probe_path(self, field, value):
        if not value.startswith("/") or any(c.isspace() for c in value):
            self._error(field, 'must be a request path starting with "/"')

    def _check_with_destination(self, field, value):
        if isinstance(value, str):
            if value.startswith(STATIC_PREFIX):  # coerced: no spaces around it any more
                self._check_static(field, value[len(STATIC_PREFIX):])
            elif value.strip().startswith("wsgi:"):
                if not _WSGI.fullmatch(value.strip()):
                    self._error(field, f"invalid WSGI target {value!r} (expected "
                                       "wsgi:package.module:app or wsgi:module:factory())")
            else:
                self._check_with_url(field, value)

    def _check_static(self, field, directory: str) -> None:
        if not directory:
            self._error(field, "static: needs a directory (static:./assets)")
        elif not os.path.isdir(directory):
            missing = "not a directory" if os.path.exists(directory) else "directory not found"
            self._error(field, f"static: {missing}: {directory}")

    def _check_with_upstream(self, field, value):
        if isinstance(value, str):
            kind = next((k for k in ("wsgi:", STATIC_PREFIX) if value.strip().startswith(k)), "")
            if kind:
                self._error(field, f"a {kind} destination must be a route's only destination")
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

    def _check_with_proxy_only(self, field, value):
        destination = self.document.get("destination")
        if isinstance(destination, str) and destination.strip().startswith("wsgi:"):
            self._error(field, f"{field} is only for proxied destinations (a wsgi: app reads "
                               "its own body in a greenlet)")
        elif isinstance(destination, str) and destination.strip().startswith(STATIC_PREFIX):
            self._error(field, f"{field} is only for proxied destinations, not static:")
        elif "redirect" in self.document:
            self._error(field, f"{field} is only for proxied destinations, not a redirect")

    def _check_with_rate(self, field, value):
        if parse_rate(value) is None:
            self._error(field, f"must be a count per s, m or h, like 10/s or 300/m (not {value!r})")

    def _check_with_limit_key(self, field, value):
        name = value[len("header:"):].strip() if value.startswith("header:") else None
        if value not in ("client_ip", "route") and not (name and _TOKEN.fullmatch(name)):
            self._error(field, f"must be client_ip, route or header:NAME (not {value!r})")

    def _check_with_rate_store(self, field, value):
        if value == "local":
            return
        parts = urlsplit(value)
        try:
            port_ok = parts.port is None or 1 <= parts.port <= 65535
        except ValueError:
            port_ok = False
        db = parts.path.strip("/")
        if parts.scheme not in ("redis", "rediss") or not parts.hostname or not port_ok \
                or not (db == "" or db.isdigit()):
            self._error(field, "must be local or redis://HOST[:PORT][/DB] "
                               f"(not {value!r})")

    def _check_with_user(self, field, value):
        try:
            pwd.getpwuid(int(value)) if value.isdigit() else pwd.getpwnam(value)
        except KeyError:
            if not value.isdigit():  # a bare uid needs no passwd entry (containers)
                self._error(field, f"no such user on this machine: {value!r}")

    def _check_with_group(self, field, value):
        try:
            grp.getgrgid(int(value)) if value.isdigit() else grp.getgrnam(value)
        except KeyError:
            if not value.isdigit():
                self._error(field, f"no such group on this machine: {value!r}")

    def _check_with_redirect_https(self, field, value):
        if value is not True and value is not False and not 1 <= value <= 65535:
            self._error(field, "must be true, false or a port (1-65535)")
        elif value and ("tls" in self.document or "sslConfig" in self.document):
            self._error(field, "an instance with TLS cannot redirect to HTTPS (itself)")

    def _check_with_http2(self, field, value):
        tls = "tls" in self.document or "sslConfig" in self.document
        if value is not True and value is not False and value != "cleartext":
            self._error(field, "must be true, false or cleartext")
        elif value == "cleartext" and tls:
            self._error(field, "cleartext is for instances without TLS (with TLS, HTTP/2 is "
                               "offered by ALPN: http2: true)")

    def _check_with_upstream_tls(self, field, value):
        if not _speaks_https(self.document):
            self._error(field, "tls is only for https:// destinations")
            return
        problem = client_files_problem(value)
        if problem:
            self._error(field, problem)

    # -- access rules (auth, allow, deny)

    def _check_with_ip_rule(self, field, value):
        if value != "all":
            self._check_with_cidr(field, value)

    def _check_with_auth(self, field, value):
        if value is True:
            self._error(field, "must be a mapping (basic: or forward:), or false for none")
        elif isinstance(value, dict) and not value.keys() & {"basic", "forward"}:
            self._error(field, "needs basic: or forward:")

    def _check_with_basic_auth(self, field, value):
        if not value.keys() & {"users", "htpasswd"}:
            self._error(field, "needs users: or htpasswd:")

    def _check_with_realm(self, field, value):
        # sent inside a quoted string (RFC 9110 §11.2): no quote, backslash or control
        if any(c in '"\\' or ord(c) < 32 or ord(c) == 127 for c in value):
            self._error(field, "must not contain quotes, backslashes or control characters")

    def _check_with_user_name(self, field, value):
        problem = user_problem(value)
        if problem:
            self._error(field, problem)

    def _check_with_password_hash(self, field, value):
        problem = hash_problem(value)
        if problem:
            self._error(field, problem)

    def _check_with_htpasswd(self, field, value):
        for problem in read_htpasswd(value)[1]:
            self._error(field, problem)

    def _check_with_auth_url(self, field, value):
        try:
            parse_auth_url(value)
        except ValueError as exc:
            self._error(field, str(exc))

    def _check_with_copied_field(self, field, value):
        if not _TOKEN.fullmatch(value):
            self._error(field, f"not a header name: {value!r}")
        elif value.lower() in _NOT_COPIED:
            self._error(field, f"{value} frames or routes the request: it cannot be copied")

    def _check_with_codings(self, field, value):
        if "br" in value and not brotli_installed():
            self._error(field, "br needs the brotli package: pip install 'rex-proxy[brotli]' "
                               "(or leave br out)")

    def _check_with_media_range(self, field, value):
        if not _MEDIA_RANGE.fullmatch(value):
            self._error(field, f"must be a media type like text/html or text/*, not {value!r}")

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


def _speaks_https(document: dict) -> bool:
    """Whether the route or destination mapping holding ``tls:`` names an https:// upstream."""
    destination = document.get("destination", document.get("url"))
    entries = destination if isinstance(destination, list) else [destination]
    for entry in entries:
        url = entry.get("url") if isinstance(entry, dict) else entry
        if isinstance(url, str) and url.strip().lower().startswith("https://"):
            return True
    return False


# ------------------------------------------------------------------ error wording

_TYPE_WORDS = {
    "integer": "a whole number",
    "boolean": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping",
    "duration": "a duration (seconds, or like 500ms, 30s, 5m, 1h)",
    "size": "a size (bytes, or like 512k, 10m, 1g)",
    "https_redirect": "true, false or a port (1-65535)",
}


def _type_message(error) -> str:
    names = [error.constraint] if isinstance(error.constraint, str) else error.constraint
    return "must be " + " or ".join(_TYPE_WORDS.get(n, n) for n in names)


_MESSAGES = {
    errors.REQUIRED_FIELD.code: lambda e: "required field",
    errors.UNKNOWN_FIELD.code: lambda e: "unknown field" + _hint(e.document_path),
    errors.EXCLUDES_FIELD.code: lambda e: f"cannot be used together with {e.constraint}",
    errors.DEPENDENCIES_FIELD.code: lambda e: f"needs {_names(e.constraint)} beside it",
    errors.EMPTY_NOT_ALLOWED.code: lambda e: "must not be empty",
    errors.NOT_NULLABLE.code: lambda e: "has no value",
    errors.BAD_TYPE.code: _type_message,
    errors.MIN_VALUE.code: lambda e: f"must be at least {e.constraint}",
    errors.MAX_VALUE.code: lambda e: f"must be at most {e.constraint}",
    errors.UNALLOWED_VALUE.code: lambda e: f"must be one of {', '.join(map(str, e.constraint))}"
                                           f" (not {e.value!r})",
    errors.CUSTOM.code: lambda e: e.info[0],
}


def _names(constraint: str | Sequence[str]) -> str:
    return constraint if isinstance(constraint, str) else " and ".join(constraint)


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
