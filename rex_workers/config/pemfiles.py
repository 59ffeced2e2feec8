"""The PEM files of an upstream's ``tls:`` mapping: do they load, and if not, why.

May: read the files named (``ca``, ``cert``, ``key``) into a throwaway stdlib
``SSLContext`` and word what fails for people. May not: build the contexts the
workers connect with (``shared/tls.py`` does), import gevent, know line numbers.
Used by the validator, so a bad file is a ``file:line`` config error at
``rex check`` / start / reload, not a 502 when a worker first connects.
"""

from __future__ import annotations

import os
import ssl


class _Encrypted(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _Encrypted  # without a callback OpenSSL would prompt on the terminal


def client_files_problem(tls: dict) -> str | None:
    """Why the CA file or the client certificate and key cannot be loaded, or None.

    Checked here, not when a worker first connects, so that a bad file is a config
    error with its line instead of a 502 later. Missing files are reported by their
    own fields' ``file`` check.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca, cert, key = tls.get("ca"), tls.get("cert"), tls.get("key")
    if isinstance(ca, str) and os.path.isfile(ca):
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError:
            return f"cannot load CA file {ca}: no PEM certificates in it"
        except OSError as exc:
            return f"cannot load CA file {ca}: {exc.strerror or exc}"
    if not all(isinstance(x, str) and os.path.isfile(x) for x in (cert, key)):
        return None
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        return (f"the key {key} is encrypted with a passphrase; Rex needs an unencrypted key "
                "(openssl pkey -in KEY -out KEY.plain)")
    except (ssl.SSLError, OSError) as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            why = "the key does not belong to the certificate"
        elif isinstance(exc, ssl.SSLError):
            why = f"not a PEM certificate and key ({exc.reason or exc})"
        else:
            why = exc.strerror or str(exc)
        return f"cannot load client certificate {cert} with key {key}: {why}"
    return None
