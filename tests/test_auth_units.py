"""Basic auth's policy without sockets: parsing the credential, the cache, the failure
budget, the rule's choices (with a counting ``verify`` and a clock the test moves), and
which stored hashes the config accepts."""

from __future__ import annotations

import base64
import dataclasses
import shutil
import subprocess

import bcrypt
import pytest
import yaml

from rex_workers.access.basic import (
    BasicRule,
    CredentialCache,
    FailureBudget,
    client_key,
    credentials,
)
from rex_workers.config.dump import dump
from rex_workers.config.htpasswd import hash_problem, read_htpasswd
from rex_workers.config.loader import load_config
from rex_workers.config.model import BasicAuth
from rex_workers.http.request import Request

HASH = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode()


def basic(pair: bytes) -> bytes:
    return b"Basic " + base64.b64encode(pair)


@pytest.mark.parametrize(("value", "expected"), [
    (basic(b"alice:pw"), (b"alice", b"pw", b"alice:pw")),
    (basic(b"alice:p:w"), (b"alice", b"p:w", b"alice:p:w")),  # only the first colon splits
    (b"bAsIc " + base64.b64encode(b"a:"), (b"a", b"", b"a:")),
    (basic(b"no colon"), None),
    (b"Bearer abc", None),
    (b"Basic ***", None),
    (b"Basic YWxpY2U6cHc", None),  # bad padding
    (None, None),
])
def test_credentials(value, expected):
    assert credentials(value) == expected


def test_client_key_groups_an_ipv6_host_s_64():
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"


def test_cache_keys_are_keyed_hashes_that_expire():
    cache = CredentialCache(seconds=10, size=2)
    key = cache.key(b"alice:pw")
    assert b"pw" not in key and key != CredentialCache().key(b"alice:pw")
    cache.remember(key, now=0)
    assert cache.fresh(key, now=9.9)
    assert not cache.fresh(key, now=10)
    for n in range(3):  # the oldest goes when full
        cache.remember(b"%d" % n, now=0)
    assert not cache.fresh(b"0", now=1) and cache.fresh(b"2", now=1)


def test_failure_budget_refills_and_refunds():
    budget = FailureBudget(burst=2, rate=0.5)
    assert budget.take("a", now=0) == 0
    assert budget.take("a", now=0) == 0
    assert budget.take("a", now=0) == pytest.approx(2.0)
    assert budget.take("b", now=0) == 0  # another client has its own
    assert budget.take("a", now=2) == 0  # one token back after 1 / rate seconds
    budget.refund("a")  # that check passed: it did not cost a failure
    assert budget.take("a", now=2) == 0


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rule_checks_once_then_trusts_the_cache_until_it_expires():
    checks = []

    def verify(password: bytes, stored: bytes) -> bool:
        checks.append(password)
        return bcrypt.checkpw(password, stored)

    clock, logged = Clock(), []
    rule = BasicRule(BasicAuth(users=(("alice", HASH),), realm="R"), lambda req: "192.0.2.1",
                     verify, logged.append, clock)

    def attempt(pair: bytes):
        req = Request("GET", b"/", "/", b"", "1.1",
                      [(b"Host", b"a"), (b"Authorization", basic(pair))])
        return rule(req), req

    answer, req = attempt(b"alice:wonderland")
    assert answer is None and req.headers == [(b"Host", b"a")]  # the credential is gone
    assert attempt(b"alice:wonderland")[0] is None
    assert len(checks) == 1
    clock.now += 301
    assert attempt(b"alice:wonderland")[0] is None
    assert len(checks) == 2
    refused = attempt(b"bob:wonderland")[0]
    assert refused.status == 401
    assert dict(refused.headers)[b"WWW-Authenticate"] == b'Basic realm="R", charset="UTF-8"'
    assert len(checks) == 3  # an unknown user costs a check all the same
    assert logged == ["basic auth: unknown user bob from 192.0.2.1"]
    assert attempt(b"alice:" + b"w" * 100)[0].status == 401
    assert checks[-1] == b"w" * 72  # bcrypt's limit, as htpasswd -B applies it


@pytest.mark.parametrize(("stored", "kind"), [
    ("$apr1$Jm3qvbV0$0PBBwLiS2ecMgnNQn0ZLx/", "MD5 ($apr1$)"),
    ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1 ({SHA})"),
    ("$6$salt$hash", "SHA-512-crypt ($6$)"),
    ("rq1pR4Jr6YtbA", "DES crypt or plain text"),
    ("$2x$04$" + "a" * 53, "bcrypt $2x$"),
    ("$2y$04$short", "a malformed bcrypt hash"),
])
def test_only_bcrypt_hashes_are_accepted(stored, kind):
    assert kind in hash_problem(stored)


def test_bcrypt_spellings_are_accepted():
    for prefix in ("$2a$", "$2b$", "$2y$"):
        assert hash_problem(prefix + HASH[4:]) is None


def test_htpasswd_file(tmp_path):
    path = tmp_path / "users"
    path.write_text(f"# comment\n\nalice:{HASH}\nbob:$apr1$x$y\nbroken line\n")
    users, problems = read_htpasswd(str(path))
    assert users == [("alice", HASH)]
    assert problems == [f"{path}:4: unsupported password hash: MD5 ($apr1$); use bcrypt: "
                        "htpasswd -B, or bcrypt.hashpw()",
                        f"{path}:5: expected user:hash"]


@pytest.mark.skipif(shutil.which("htpasswd") is None,
                    reason="apache2-utils (htpasswd) not installed; the bcrypt package's "
                           "hashes above cover the same $2y$ format")
def test_a_file_written_by_apache_htpasswd(tmp_path):
    path = tmp_path / "users"
    subprocess.run(["htpasswd", "-B", "-C", "4", "-b", "-c", str(path), "alice", "wonder land"],
                   check=True, capture_output=True)
    subprocess.run(["htpasswd", "-m", "-b", str(path), "bob", "x"], check=True,
                   capture_output=True)
    users, problems = read_htpasswd(str(path))
    assert users[0][1].startswith("$2y$04$")
    assert bcrypt.checkpw(b"wonder land", users[0][1].encode())
    assert problems == [f"{path}:2: unsupported password hash: MD5 ($apr1$); use bcrypt: "
                        "htpasswd -B, or bcrypt.hashpw()"]


def test_rex_config_dumps_access_rules_that_load_back_the_same(tmp_path):
    """Routes say only where they differ from their instance (auth: false, allow: [all])."""
    (tmp_path / "users").write_text(f"alice:{HASH}\n")
    path = tmp_path / "rex.config.yaml"
    path.write_text(f"""\
server:
  instances:
    - port: 8000
      allow: [10.0.0.0/8]
      auth: {{basic: {{htpasswd: users}}}}
      routes:
        - {{path: /a, destination: "localhost:3000"}}
        - {{path: /b, destination: "localhost:3000", auth: false, allow: all}}
        - {{path: /c, destination: "localhost:3000", deny: [10.6.0.0/16]}}
        - path: /d
          destination: localhost:3000
          auth: {{forward: {{url: "http://auth:4180/check?x=1", copy_headers: X-User}}}}
          deny: all
    - port: 8001
      auth: {{basic: {{realm: R, users: {{bob: "{HASH}"}}}}}}
""")
    config = load_config(str(path))
    doc = dump(config)
    routes = doc["server"]["instances"][0]["routes"]
    assert "auth" not in routes[0] and "allow" not in routes[0]
    assert (routes[1]["auth"], routes[1]["allow"]) == (False, ["all"])
    assert "allow" not in routes[2] and routes[2]["deny"] == ["10.6.0.0/16"]  # replaces both
    copy = tmp_path / "effective.yaml"
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert normalized(load_config(str(copy))) == normalized(config)


def normalized(config):
    instances = tuple(dataclasses.replace(i, line=0, routes=tuple(
        dataclasses.replace(r, line=0) for r in i.routes)) for i in config.instances)
    return dataclasses.replace(config, path="", digest="", instances=instances)
