"""Basic auth's stored passwords: bcrypt hashes, inline or in an Apache ``htpasswd`` file.

May: say whether a stored hash is one Rex can check (bcrypt, as ``htpasswd -B`` writes
it), name the kind of one it cannot, and read ``user:hash`` lines with their line
numbers. May not: check a password (the worker does, with the ``bcrypt`` package),
import bcrypt or gevent, or know the config's document paths (the validator turns
these problems into config errors).

Only bcrypt: Apache's other kinds (MD5 ``$apr1$``, SHA-1 ``{SHA}``, DES crypt, plain
text) are fast to brute-force, and refusing them at load time says so before the
first login fails.
"""

from __future__ import annotations

import re

# $2a$/$2b$/$2y$, a two-digit cost, then 22 salt and 31 hash characters (bcrypt's base64).
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_KINDS = (  # (how a hash starts, what it is): for the error that refuses it
    ("$apr1$", "MD5 ($apr1$)"),
    ("{SHA}", "SHA-1 ({SHA})"),
    ("$1$", "MD5-crypt ($1$)"),
    ("$5$", "SHA-256-crypt ($5$)"),
    ("$6$", "SHA-512-crypt ($6$)"),
    ("$2x$", "bcrypt $2x$ (the buggy-era variant)"),
    ("$argon2", "Argon2"),
    ("$y$", "yescrypt ($y$)"),
)
FIX = "use bcrypt: htpasswd -B, or bcrypt.hashpw()"


def hash_problem(stored: str) -> str | None:
    """Why ``stored`` is not a bcrypt hash Rex can check, or None when it is one."""
    match = _BCRYPT.fullmatch(stored)
    if match:
        cost = int(match[1])
        return None if 4 <= cost <= 31 else f"bcrypt cost {cost} is out of range (4-31)"
    kind = next((name for prefix, name in _KINDS if stored.startswith(prefix)), None)
    if kind is None and stored.startswith("$2"):
        kind = "a malformed bcrypt hash"
    elif kind is None:
        kind = "DES crypt or plain text" if "$" not in stored else "an unknown hash kind"
    return f"unsupported password hash: {kind}; {FIX}"


def user_problem(name: str) -> str | None:
    """Basic auth sends ``user:password``: a user name cannot hold a colon (RFC 7617 §2)."""
    if not name:
        return "a user name cannot be empty"
    if ":" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"a user name cannot contain ':' or control characters: {name!r}"
    return None


def read_htpasswd(path: str) -> tuple[list[tuple[str, str]], list[str]]:
    """``(users, problems)`` of an htpasswd file; each problem reads ``file:line: message``.

    Blank lines and ``#`` comments are skipped, as Apache does. A user listed twice
    is an error: Apache would take the first, silently, whatever the second says.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return [], [f"htpasswd file not found: {path}"]
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"cannot read htpasswd file {path}: {getattr(exc, 'strerror', None) or exc}"]
    users: list[tuple[str, str]] = []
    problems: list[str] = []
    first: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, stored = line.partition(":")
        problem = (None if colon else "expected user:hash") or user_problem(name) \
            or hash_problem(stored)
        if problem is None and name in first:
            problem = f"user {name} is listed twice (first at line {first[name]})"
        if problem:
            problems.append(f"{path}:{number}: {problem}")
            continue
        first[name] = number
        users.append((name, stored))
    if not users and not problems:
        problems.append(f"{path}: no users in the htpasswd file")
    return users, problems
