"""https:// upstreams and their `tls:` options, through a real master and real TLS upstreams.

The upstreams are Python HTTPS servers started here with certificates made by
trustme: one self-signed (the CA's own certificate serves), one issued for
``backend.test`` only, one that requires a client certificate. One master with a
route per case serves every test of the module; the config-error cases that need
real PEM files (a key that does not match) load configs written here.
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme
from conftest import Recorder, free_port, send_request, wait_for
from cryptography.hazmat.primitives import serialization

from rex_workers.config.loader import ConfigError, load_config
from rex_workers.config.model import UpstreamTLS


class TLSRecorder(Recorder):
    """The conftest Recorder, plus what TLS told the server: SNI and the client's certificate."""

    def _handle(self) -> None:
        cert = self.connection.getpeercert()
        subject = dict(x[0] for x in cert["subject"]) if cert else {}
        self.headers["X-Seen-Client-CN"] = subject.get("commonName", "-")
        self.headers["X-Seen-SNI"] = self.server.sni.get(self.client_address, "-")
        super()._handle()

    do_GET = _handle


class TLSUpstream:
    """A threaded HTTPS server; each handshake runs in its connection's own thread.

    ``cert``: a trustme leaf certificate, or (cert file, key file) of a self-signed
    one; ``client_ca``: require a client certificate issued by it.
    """

    def __init__(self, cert: trustme.LeafCert | tuple[str, str], *,
                 client_ca: trustme.CA | None = None) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if isinstance(cert, tuple):
            context.load_cert_chain(*cert)
        else:
            cert.configure_cert(context)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            client_ca.configure_trust(context)
        self.sni: dict = {}
        context.sni_callback = self._sni
        server = ThreadingHTTPServer(("127.0.0.1", 0), TLSRecorder)
        server.daemon_threads = True
        server.requests = []
        server.sni = self.sni
        accept = server.get_request

        def get_request():
            sock, addr = accept()
            # The handshake waits for the connection's thread (on its first read).
            return context.wrap_socket(sock, server_side=True,
                                       do_handshake_on_connect=False), addr

        server.get_request = get_request
        server.handle_error = lambda _request, _addr: None  # refused handshakes: expected
        self.server = server
        self.port = server.server_port
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()

    def _sni(self, sock, name, _context) -> None:
        self.sni[sock.getpeername()] = name or "-"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    """Certificates and PEM files: ``ca`` signs the upstreams, ``client_ca`` Rex's client
    certificate; ``self.crt`` is self-signed; ``other.key`` belongs to no certificate here."""
    base = tmp_path_factory.mktemp("pki")
    ca, client_ca, lone = trustme.CA(), trustme.CA(), trustme.CA()
    files = {name: str(base / name) for name in (
        "ca.pem", "client.crt", "client.key", "other.key", "self.crt", "self.key")}
    ca.cert_pem.write_to_path(files["ca.pem"])
    client = client_ca.issue_cert("rex-client@example.test", common_name="rex-client")
    client.cert_chain_pems[0].write_to_path(files["client.crt"])
    client.private_key_pem.write_to_path(files["client.key"])
    trustme.CA().issue_cert("x.test").private_key_pem.write_to_path(files["other.key"])
    lone.cert_pem.write_to_path(files["self.crt"])  # a CA's own certificate is self-signed
    lone.private_key_pem.write_to_path(files["self.key"])
    return {"ca": ca, "client_ca": client_ca, **files}


@pytest.fixture(scope="module")
def site(rex_module, pki):
    ca = pki["ca"]
    self_signed = TLSUpstream((pki["self.crt"], pki["self.key"]))
    named = TLSUpstream(ca.issue_cert("backend.test"))  # not valid for 127.0.0.1
    mutual = TLSUpstream(ca.issue_cert("backend.test"), client_ca=pki["client_ca"])
    port, admin = free_port(), free_port()
    trusted = f'ca: {pki["ca.pem"]}, server_name: backend.test'
    client = f'cert: {pki["client.crt"]}, key: {pki["client.key"]}'
    rex_module.write(f"""\
        server:
          instances:
            - port: {port}
              host: 127.0.0.1
              routes:
                - path: /default
                  destination: https://127.0.0.1:{self_signed.port}
                - path: /insecure
                  destination: https://127.0.0.1:{self_signed.port}
                  tls: {{verify: false}}
                  health_check: {{path: /health, interval: 100ms}}
                - path: /named
                  destination: https://127.0.0.1:{named.port}
                  tls: {{{trusted}}}
                - path: /wrong-name
                  destination: https://127.0.0.1:{named.port}
                  tls: {{ca: {pki["ca.pem"]}}}
                - path: /mutual
                  destination:
                    - url: https://127.0.0.1:{mutual.port}
                      tls: {{{client}}}     # beside the route's: nearest wins, key by key
                  tls: {{{trusted}}}
                - path: /mutual-without-cert
                  destination: https://127.0.0.1:{mutual.port}
                  tls: {{{trusted}}}
                  retries: 0
        logging: {{access: off}}
        admin: {{port: {admin}}}
        workers: 1
    """)
    rex_module.start(ports=(port, admin))
    yield {"port": port, "admin": admin, "self_signed": self_signed, "named": named,
           "mutual": mutual, "rex": rex_module}
    for up in (self_signed, named, mutual):
        up.close()


def get(site, path: str):
    return send_request(site["port"], f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def error_log_line(rex, needle: str) -> str:
    return wait_for(lambda: next((line for line in rex.output().splitlines()
                                  if needle in line), None), what=f"log line with {needle!r}")


def test_default_verification_refuses_a_self_signed_upstream(site):
    reply = get(site, "/default/x")
    assert reply.status == 502
    line = error_log_line(site["rex"], f"upstream https://127.0.0.1:{site['self_signed'].port}")
    assert "TLS handshake failed: certificate verify failed: self-signed" in line
    assert "tls.ca" in line and "tls.verify: false" in line  # what to change, on the line
    assert not [r for r in site["self_signed"].server.requests if r["path"] != "/health"]


def test_verify_false_accepts_a_self_signed_upstream(site):
    reply = get(site, "/insecure/x?y=1")
    assert reply.status == 200
    assert json.loads(reply.body)["path"] == "/insecure/x?y=1"


def test_health_checks_speak_tls_as_their_route_says(site):
    """The probe of /insecure uses verify: false too, so the self-signed upstream is up."""
    def probe_state():
        doc = json.loads(send_request(site["admin"],
                                      b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").body)
        rows = {u["route"]: u["health_check"] for u in doc["upstreams"]}
        check = rows["/insecure"]
        return check and check["probes"] >= 2 and check["last_probe_ok"] and rows

    rows = wait_for(probe_state, what="passing probes over TLS")
    assert rows["/default"] is None  # same upstream, no check of its own (issue 17, item 6)


def test_ca_and_server_name_verify_against_a_private_ca(site):
    reply = get(site, "/named/a")
    assert reply.status == 200
    seen = json.loads(reply.body)
    assert seen["headers"]["X-Seen-SNI"] == "backend.test"  # SNI is the server_name
    assert seen["headers"]["Host"] == f"127.0.0.1:{site['named'].port}"  # Host is not


def test_the_name_checked_is_the_host_without_server_name(site):
    reply = get(site, "/wrong-name/a")
    assert reply.status == 502
    line = error_log_line(site["rex"], "checked for 127.0.0.1")
    assert "certificate verify failed" in line


def test_client_certificate_for_an_upstream_that_requires_one(site):
    reply = get(site, "/mutual/a")
    assert reply.status == 200
    assert json.loads(reply.body)["headers"]["X-Seen-Client-CN"] == "rex-client"


def test_no_client_certificate_is_a_502_for_such_an_upstream(site):
    before = len(site["mutual"].server.requests)
    reply = get(site, "/mutual-without-cert/a")
    assert reply.status == 502
    assert len(site["mutual"].server.requests) == before
    line = error_log_line(site["rex"], "GET /mutual-without-cert/a")
    assert "the upstream requires a client certificate (set tls.cert and tls.key)" in line


# -- the config: merging, and files that do not load (file:line errors) ---------------------


def write(tmp_path, text: str):
    path = tmp_path / "rex.config.yaml"
    path.write_text(text)
    return str(path)


def test_route_tls_is_merged_into_each_https_destination_key_by_key(tmp_path, pki):
    config = load_config(write(tmp_path, f"""\
server:
  instances:
    - port: 8000
      routes:
        - path: /api
          tls: {{ca: {pki["ca.pem"]}, server_name: api.internal}}
          destination:
            - https://a.internal
            - url: https://b.internal
              tls: {{server_name: b.internal,
                     cert: {pki["client.crt"]}, key: {pki["client.key"]}}}
            - http://c.internal:8080
upstream:
  - url: https://pool.internal
    tls: {{verify: false}}
"""))
    a, b, c = config.instances[0].routes[0].upstreams
    assert a.tls == UpstreamTLS(ca=pki["ca.pem"], server_name="api.internal")
    assert b.tls == UpstreamTLS(ca=pki["ca.pem"], server_name="b.internal",
                                cert=pki["client.crt"], key=pki["client.key"])
    assert b.tls_name == "b.internal" and b.key == "https://b.internal:443"
    assert c.tls is None and c.tls_name == "c.internal"
    assert config.upstream[0].tls == UpstreamTLS(verify=False)
    assert a.conn_key != config.upstream[0].conn_key


def test_files_that_do_not_load_are_config_errors_with_their_line(tmp_path, pki):
    key = serialization.load_pem_private_key(Path(pki["client.key"]).read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    path = write(tmp_path, f"""\
server:
  instances:
    - port: 8000
      routes:
        - path: /a
          destination: https://a.internal
          tls: {{cert: {pki["client.crt"]}, key: {pki["other.key"]}}}
        - path: /b
          destination: https://b.internal
          tls: {{ca: {pki["client.key"]}}}
        - path: /c
          destination: https://c.internal
          tls: {{cert: {pki["client.crt"]}, key: {encrypted}}}
""")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.errors == [
        f"{path}:7: server.instances.0.routes.0.tls: cannot load client certificate "
        f"{pki['client.crt']} with key {pki['other.key']}: the key does not belong to the "
        "certificate",
        f"{path}:10: server.instances.0.routes.1.tls: cannot load CA file {pki['client.key']}: "
        "no PEM certificates in it",
        f"{path}:13: server.instances.0.routes.2.tls: the key {encrypted} is encrypted with a "
        "passphrase; Rex needs an unencrypted key (openssl pkey -in KEY -out KEY.plain)",
    ]
