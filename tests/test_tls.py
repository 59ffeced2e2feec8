"""HTTPS end to end: certificates made here by trustme, a real master, real sockets.

One master (one worker, so every connection shares one gevent hub) serves a
TLS port with two sites and two certificates chosen by SNI, and a plain port
that redirects to https. Certificate reload and bad certificates use masters
of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import time

import pytest
import trustme
from conftest import free_port, read_reply, send_request, wait_for

from rex_workers.config.loader import load_config
from rex_workers.http.request import Request
from rex_workers.serve.site import RedirectHttps

BIG = os.urandom(300 * 1024)  # past any single TLS record and socket buffer


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def write_cert(ca: trustme.CA, directory, name: str, *hosts: str) -> tuple[str, str]:
    cert = ca.issue_cert(*hosts)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def tls_connect(port: int, name: str | None, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    if name is None:  # no SNI: an IP address, as `curl https://127.0.0.1/` sends
        context.check_hostname = False
    return context.wrap_socket(raw, server_hostname=name)


def https_get(port: int, name: str, context: ssl.SSLContext, path: str = "/"):
    with tls_connect(port, name, context) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        with s.makefile("rb") as f:
            return read_reply(f), s


def names_in(cert: dict) -> set[str]:
    return {value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}


@pytest.fixture(scope="module")
def site(rex_module, upstream_module, ca, tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    a_cert, a_key = write_cert(ca, base, "a", "a.test")
    b_cert, b_key = write_cert(ca, base, "b", "b.test")
    public = base / "public"
    public.mkdir()
    (public / "big.bin").write_bytes(BIG)
    rec = upstream_module()
    tls_port, http_port, admin_port = free_port(), free_port(), free_port()
    to_port = free_port()  # redirects to a port named in the config
    rex_module.write(f"""\
        server:
          instances:
            - port: {tls_port}
              host: 127.0.0.1
              server_names: [a.test]
              public: {public}
              sslConfig: {{cert: {a_cert}, key: {a_key}}}
              routes:
                - {{path: /api, destination: "{rec.url}"}}
            - port: {tls_port}
              host: 127.0.0.1
              server_names: [b.test]
              tls: {{cert: {b_cert}, key: {b_key}}}
              routes:
                - {{path: /, destination: "{rec.url}"}}
            - port: {http_port}
              host: 127.0.0.1
              redirect_https: true
            - port: {to_port}
              host: 127.0.0.1
              redirect_https: 8443
        timeouts: {{header: 1}}
        logging: {{access: off}}
        admin: {{port: {admin_port}}}
        workers: 1
    """)
    rex_module.start(ports=(tls_port, http_port, to_port))
    return {"tls": tls_port, "http": http_port, "admin": admin_port, "rec": rec,
            "to": to_port}


def test_https_end_to_end_forwards_proto_https(site, ca):
    reply, _sock = https_get(site["tls"], "a.test", client_context(ca), "/api/x?y=1")
    assert reply.status == 200
    seen = json.loads(reply.body)
    assert seen["path"] == "/api/x?y=1"
    assert seen["headers"]["X-Forwarded-Proto"] == "https"
    assert seen["headers"]["X-Forwarded-Port"] == str(site["tls"])


def test_modern_tls_only(site, ca):
    with tls_connect(site["tls"], "a.test", client_context(ca)) as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        assert s.selected_alpn_protocol() in (None, "http/1.1")
    old = client_context(ca)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.set_ciphers("AES128-SHA")  # RSA key exchange, CBC: not offered by Rex
    with pytest.raises(ssl.SSLError):
        tls_connect(site["tls"], "a.test", old).close()


def test_sni_picks_each_sites_certificate_on_one_port(site, ca):
    context = client_context(ca)
    for name in ("a.test", "b.test"):
        with tls_connect(site["tls"], name, context) as s:
            assert names_in(s.getpeercert()) == {name}
    # b.test's own routes answer it (the Host header picks the site after the handshake)
    reply, _ = https_get(site["tls"], "b.test", context, "/other")
    assert reply.status == 200 and json.loads(reply.body)["path"] == "/other"
    # No SNI at all: the first site's certificate (the default server of the port)
    with tls_connect(site["tls"], None, client_context(ca)) as s:
        assert names_in(s.getpeercert()) == {"a.test"}


def test_static_file_over_tls_falls_back_from_sendfile(site, ca):
    reply, _ = https_get(site["tls"], "a.test", client_context(ca), "/big.bin")
    assert reply.status == 200
    assert reply.body == BIG


def test_redirect_instance_sends_308_to_the_https_port(site):
    tls = site["tls"]  # not 443: the redirect must name it (issue 17)
    for host in (b"a.test", b"b.test", b"shop.example"):  # the TLS port's default site too
        reply = send_request(site["http"], b"POST /form?a=1 HTTP/1.1\r\nHost: " + host +
                             b":8080\r\nContent-Length: 0\r\n\r\n")
        assert reply.status == 308  # keeps the method and body (RFC 9110 §15.4.9)
        assert reply.headers["location"] == f"https://{host.decode()}:{tls}/form?a=1"


def test_redirect_keeps_an_ipv6_literal_whole(site):
    reply = send_request(site["http"], b"GET /p HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
    assert reply.status == 308 and reply.headers["location"] == f"https://[::1]:{site['tls']}/p"


def test_redirect_to_the_port_the_config_names(site):
    reply = send_request(site["to"], b"GET /p?q HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert reply.status == 308 and reply.headers["location"] == "https://a.test:8443/p?q"


def test_the_redirect_port_follows_the_host_like_the_tls_listeners_do(tmp_path):
    """Each host goes to the port of the TLS instance that would serve it; 443 is left out."""
    (tmp_path / "c.pem").write_text("only existence is checked here")
    tls = "tls: {cert: c.pem, key: c.pem}"
    path = tmp_path / "rex.config.yaml"
    path.write_text(f"""\
server:
  instances:
    - {{port: 8080, host: 127.0.0.1, redirect_https: true}}
    - {{port: 8443, host: 127.0.0.1, server_names: [a.test], {tls}}}
    - {{port: 9443, host: 0.0.0.0, server_names: ["*.b.test"], {tls}}}
    - {{port: 7443, host: 127.0.0.2, server_names: [c.test], {tls}}}
    - {{port: 443, host: 127.0.0.1, server_names: [d.test], {tls}}}
    - {{port: 8081, host: 127.0.0.1, redirect_https: 4443}}
    - {{port: 8082, host: "::1", redirect_https: true}}
""")
    instances = load_config(str(path)).instances

    def location(index: int, host: str) -> str:
        req = Request(method="GET", target=b"/x", path="/x", query=b"", version="1.1",
                      headers=[], raw_path=b"/x", host=host)
        fields = dict(RedirectHttps(instances[index].https_ports)(req).headers)
        return fields[b"Location"].decode()

    assert location(0, "a.test") == "https://a.test:8443/x"
    assert location(0, "www.b.test") == "https://www.b.test:9443/x"  # a wildcard address
    assert location(0, "c.test") == "https://c.test:8443/x"  # 127.0.0.2: not reachable here
    assert location(0, "d.test") == "https://d.test/x"
    assert location(0, "elsewhere.test") == "https://elsewhere.test:8443/x"  # the first
    assert location(5, "a.test") == "https://a.test:4443/x"
    assert location(6, "a.test") == "https://a.test/x"  # no TLS instance on IPv6: 443


def test_failed_handshakes_cost_only_their_own_connection(site, ca):
    port = site["tls"]
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)  # never says hello
    garbage = socket.create_connection(("127.0.0.1", port), timeout=5)
    garbage.sendall(b"\x16\x03\x01\x00\x05hello" + os.urandom(64))
    plain = socket.create_connection(("127.0.0.1", port), timeout=5)
    plain.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    try:
        # The one worker's hub is not blocked by any of them: HTTPS works meanwhile.
        started = time.monotonic()
        reply, _ = https_get(port, "a.test", client_context(ca), "/api/during")
        assert reply.status == 200 and time.monotonic() - started < 0.9
        # A client that spoke plain HTTP to the TLS port is told so, in clear text.
        answer = plain.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"use https://" in answer
        with contextlib.suppress(ConnectionResetError):  # unread bytes make the close a reset
            while garbage.recv(4096):  # a TLS alert, maybe, then the connection is closed
                pass
        # The silent one is dropped after the header timeout (1 s).
        silent.settimeout(5)
        closed_at = time.monotonic()
        assert silent.recv(1) == b""
        assert time.monotonic() - closed_at < 3
    finally:
        for s in (silent, garbage, plain):
            s.close()
    reply, _ = https_get(port, "b.test", client_context(ca), "/after")
    assert reply.status == 200

    def failures() -> int:
        reply = send_request(site["admin"], b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        text = reply.body.decode()
        found = re.search(r'^rex_tls_handshake_failures_total\{listener="127.0.0.1:\d+"\} (\d+)$',
                          text, re.M)
        return int(found.group(1)) if found else 0

    wait_for(lambda: failures() >= 3, what="three failed handshakes counted")


def test_certificates_are_read_again_on_reload(rex, upstream, tmp_path):
    first, second = trustme.CA(), trustme.CA()
    cert, key = write_cert(first, tmp_path, "site", "localhost")
    rec = upstream()
    port = rex.serve({"/": rec.url}, "workers: 2",
                          instance=f"tls: {{cert: {cert}, key: {key}}}")
    assert https_get(port, "localhost", client_context(first))[0].status == 200
    # Renewed files under the same names (what certbot's renewal does), then `rex reload`.
    write_cert(second, tmp_path, "site", "localhost")
    rex.signal(signal.SIGHUP)
    wait_for(lambda: rex.status()["generation"] == 2 and rex.status()["state"] == "serving",
             what="generation 2 serving")

    def renewed() -> bool:
        try:
            return https_get(port, "localhost", client_context(second))[0].status == 200
        except ssl.SSLError:
            return False  # an old worker still draining took this connection

    wait_for(renewed, what="the renewed certificate served")
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(port, "localhost", client_context(first))


def test_unusable_certificate_fails_start_and_reload_with_its_name(rex, upstream, tmp_path, ca):
    cert, key = write_cert(ca, tmp_path, "good", "localhost")
    _other_cert, other_key = write_cert(ca, tmp_path, "other", "localhost")
    port = free_port()
    config = f"""\
        server:
          instances:
            - port: {port}
              host: 127.0.0.1
              tls: {{cert: {cert}, key: KEY}}
    """
    rex.write(config.replace("KEY", other_key))
    result = rex.cli("start", "-f", "-c", str(rex.config))
    assert result.returncode == 1
    assert (f"instance 0 (port {port}): cannot load TLS certificate {cert} with key "
            f"{other_key}: the key does not belong to the certificate") in result.stderr
    rex.write(config.replace("KEY", key))
    rex.start(ports=(port,))
    rex.write(config.replace("KEY", other_key))  # saved over a running config: no reload
    wait_for(lambda: rex.status()["reloads"]["failed"] == 1, what="the failed reload")
    assert "the key does not belong to the certificate" in rex.status()["reloads"]["last_error"]
    assert https_get(port, "localhost", client_context(ca))[0].status == 200  # welcome page
