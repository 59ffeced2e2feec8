"""TLS for Rex: server contexts and the SNI choice, client contexts for https upstreams.

May: build server ``SSLContext``s from an instance's cert and key, and client
contexts from a route's or destination's ``tls:`` (``UpstreamTLS``), with
whatever context class the caller passes (gevent's inside a worker, so
handshakes wait in the hub; the stdlib's in the master, which only checks that
files load), choose a context by SNI name, word certificate and handshake
problems for people. May not: import gevent, accept, connect or handshake (the
worker does that in the connection's greenlet), read the config file.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence

from ..config.model import TLS, Instance, UpstreamTLS

# Mozilla's "intermediate" TLS 1.2 suites: ECDHE/DHE key exchange (forward
# secrecy) with AEAD ciphers only. TLS 1.3 suites are not set by set_ciphers
# and OpenSSL's defaults for them are all modern.
CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
))

# What a client that spoke plain HTTP to a TLS port gets (nginx answers the
# same mistake with its 497 page): one readable line instead of a reset.
PLAIN_HTTP_REPLY = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: 49\r\nConnection: close\r\n\r\n"
                    b"This port speaks HTTPS: use https:// to reach it\n")


class EncryptedKeyError(ValueError):
    """Rex has no terminal to ask for a passphrase: keys must be stored unencrypted."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and block the process.
    raise EncryptedKeyError("the key is encrypted with a passphrase; Rex needs an unencrypted "
                            "key (openssl pkey -in KEY -out KEY.plain)")


def server_context(tls: TLS, context_class: type[ssl.SSLContext] = ssl.SSLContext,
                   http2: bool = False) -> ssl.SSLContext:
    """A server context for one certificate: TLS 1.2+, modern suites, and by ALPN
    HTTP/2 (``http2``) before HTTP/1.1."""
    context = context_class(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    # Client-initiated renegotiation costs the server a handshake per request
    # a client chooses to send: a cheap denial of service (RFC 5746 §4.4).
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    # A client offering only protocols we lack gets HTTP/1.1 all the same.
    context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    context.load_cert_chain(tls.cert, tls.key, password=_no_passphrase)
    return context


def certificate_problem(instance: Instance) -> str | None:
    """Why the instance's certificate and key cannot be served, in one line; None if they can."""
    if instance.tls is None:
        return None
    where = f"instance {instance.index} (port {instance.port})"
    try:
        server_context(instance.tls)
    except EncryptedKeyError as exc:
        return f"{where}: {instance.tls.key}: {exc}"
    except OSError as exc:  # SSLError is an OSError: unreadable, not PEM, key does not match
        reason = getattr(exc, "reason", None)
        if reason == "KEY_VALUES_MISMATCH":
            why = "the key does not belong to the certificate"
        elif isinstance(exc, ssl.SSLError):
            why = f"not a PEM certificate and key ({reason or exc})"
        else:
            why = exc.strerror or str(exc)
        tls = instance.tls
        return f"{where}: cannot load TLS certificate {tls.cert} with key {tls.key}: {why}"
    return None


def listener_context(instances: Sequence[Instance], select: Callable[[str], Instance],
                     context_class: type[ssl.SSLContext] = ssl.SSLContext
                     ) -> ssl.SSLContext | None:
    """The context a listener wraps its connections with; None when it does not speak TLS.

    ``instances`` share the listener (virtual hosts); ``select`` maps a name to
    one of them (``VirtualHosts.select``: exact, then wildcard, then default).
    With several certificates the default instance's context answers first and
    its SNI callback switches the connection to the context of the instance the
    client named (RFC 6066 §3). A client sending no name, or one no instance
    has, gets the default instance's certificate.
    """
    with_tls = [i for i in instances if i.tls is not None]
    if not with_tls:
        return None
    # Each instance's own ALPN list: the context chosen by SNI answers the offer.
    contexts = {i.index: server_context(i.tls, context_class, i.http2 is True)
                for i in with_tls}
    default = contexts[select("").index]
    if len(contexts) > 1:
        def choose(sock, name: str | None, _context) -> None:
            if name:
                sock.context = contexts[select(name.lower()).index]

        default.sni_callback = choose
    return default


def is_plain_http(exc: BaseException) -> bool:
    """The handshake failed because the client sent an HTTP request in clear text."""
    return isinstance(exc, ssl.SSLError) and exc.reason == "HTTP_REQUEST"


# -- the client side: https:// upstreams ---------------------------------------------------


def client_context(tls: UpstreamTLS | None, context_class: type[ssl.SSLContext] = ssl.SSLContext
                   ) -> ssl.SSLContext:
    """A context for connecting to an https upstream, as its ``tls:`` says.

    By default the certificate must chain to the system's CAs and name the
    host (or ``server_name``); ``ca`` replaces the system's CAs (nginx's
    ``proxy_ssl_trusted_certificate``, Caddy's ``tls_trust_pool``); ``verify:
    false`` accepts anything (development only). ``cert``/``key``: the client
    certificate for upstreams that require one (mutual TLS). TLS 1.2+.
    """
    context = context_class(ssl.PROTOCOL_TLS_CLIENT)  # hostname check and CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls is not None and not tls.verify:
        context.check_hostname = False  # must go before verify_mode may be relaxed
        context.verify_mode = ssl.CERT_NONE
    elif tls is not None and tls.ca:
        context.load_verify_locations(cafile=tls.ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls is not None and tls.cert:
        context.load_cert_chain(tls.cert, tls.key, password=_no_passphrase)
    # Rex speaks HTTP/1.1 upstream: a server that would choose h2 by ALPN must not.
    context.set_alpn_protocols(["http/1.1"])
    return context


class ClientContexts:
    """One client context per distinct ``tls:``, made on first use and kept.

    A context holds a parsed CA store: built once per worker, not per connection.
    """

    def __init__(self, context_class: type[ssl.SSLContext] = ssl.SSLContext) -> None:
        self._class = context_class
        self._made: dict[UpstreamTLS | None, ssl.SSLContext] = {}

    def get(self, tls: UpstreamTLS | None) -> ssl.SSLContext:
        context = self._made.get(tls)
        if context is None:
            context = self._made[tls] = client_context(tls, self._class)
        return context


# Alerts an upstream sends when it will not have Rex as a client (mutual TLS). With
# TLS 1.3 they come after Rex's side of the handshake is done, on the first read.
_CLIENT_REFUSALS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the upstream requires a client certificate "
                                         "(set tls.cert and tls.key)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the upstream refused the client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the upstream does not trust the client certificate's CA",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the upstream says the client certificate expired",
}


def handshake_problem(exc: BaseException, name: str) -> str:
    """Why a handshake with an upstream failed, in words that say what to change."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or str(exc)
        return (f"certificate verify failed: {why} (checked for {name}; trust its CA with "
                "tls.ca, or set tls.verify: false for development)")
    if isinstance(exc, TimeoutError):
        return "timed out"
    return tls_problem(exc)


def tls_problem(exc: BaseException) -> str:
    """An upstream connection's TLS error in words; the upstream's refusal of Rex as a client
    said as such."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return _CLIENT_REFUSALS.get(exc.reason, str(exc))
    return str(exc)
