"""TLS for Rex's listeners: server contexts, the SNI choice, certificate checks.

May: build server ``SSLContext``s from an instance's cert and key with whatever
context class the caller passes (gevent's inside a worker, so handshakes wait
in the hub; the stdlib's in the master, which only checks that files load),
choose a context by SNI name, word certificate problems for people. May not:
import gevent, accept or handshake (the worker does that in the connection's
greenlet), read the config file.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence

from ..config.model import TLS, Instance

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


def server_context(tls: TLS, context_class: type[ssl.SSLContext] = ssl.SSLContext
                   ) -> ssl.SSLContext:
    """A server context for one certificate: TLS 1.2+, modern suites, HTTP/1.1 by ALPN."""
    context = context_class(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    # Client-initiated renegotiation costs the server a handshake per request
    # a client chooses to send: a cheap denial of service (RFC 5746 §4.4).
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.set_alpn_protocols(["http/1.1"])  # a client that offers h2 falls back at once
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
    contexts = {i.index: server_context(i.tls, context_class) for i in with_tls}
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
