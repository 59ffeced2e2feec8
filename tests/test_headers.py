"""Unit tests of rex_workers.proxy.headers: header policy on plain data."""

from __future__ import annotations

import pytest

from rex_workers.config.model import Upstream
from rex_workers.http import h1write
from rex_workers.http.fieldnames import LOWER
from rex_workers.http.h1read import Response
from rex_workers.http.request import Request, is_websocket
from rex_workers.proxy import headers

UP = Upstream(url="http://10.1.1.1:3000", scheme="http", host="10.1.1.1", port=3000)
UP_BASE = Upstream(url="http://app:3000/v2", scheme="http", host="app", port=3000,
                   base_path="/v2")


def make_request(*fields: tuple[bytes, bytes], method: str = "GET", version: str = "1.1",
                 **kw) -> Request:
    return Request(method=method, target=b"/x", path="/x", query=b"", version=version,
                   headers=list(fields), client_addr=("192.0.2.7", 40000), server_port=8080,
                   raw_path=b"/x", **kw)


def parse(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    assert head.endswith(b"\r\n\r\n")
    first, *lines = head[:-4].split(b"\r\n")
    return first, [tuple(line.split(b": ", 1)) for line in lines]


def names(fields) -> list[bytes]:
    return [k.lower() for k, _ in fields]


def value(fields, name: bytes) -> bytes | None:
    found = [v for k, v in fields if k.lower() == name]
    assert len(found) <= 1, f"{name!r} appears {len(found)} times"
    return found[0] if found else None


def forward(req: Request, up: Upstream = UP, **kw) -> list[tuple[bytes, bytes]]:
    options = {"preserve_host": False, "trusted": False, "websocket": False,
               "length": req.content_length, "chunked": req.chunked, **kw}
    first, fields = parse(headers.request_head(req, req.target, up, **options))
    assert first == req.method.encode() + b" /x HTTP/1.1"
    return fields


def test_hop_by_hop_and_connection_listed_fields_are_removed():
    fields = forward(make_request(
        (b"Host", b"public.example"), (b"Connection", b"keep-alive, X-Secret"),
        (b"Keep-Alive", b"timeout=5"), (b"X-Secret", b"1"), (b"TE", b"trailers"),
        (b"Proxy-Connection", b"keep-alive"), (b"Upgrade", b"h2c"), (b"X-Kept", b"2"),
        (b"Expect", b"100-continue")))
    kept = names(fields)
    for gone in (b"connection", b"keep-alive", b"x-secret", b"te", b"proxy-connection",
                 b"upgrade", b"expect"):
        assert gone not in kept
    assert value(fields, b"x-kept") == b"2"


def test_forwarding_fields_from_an_untrusted_client_are_replaced():
    fields = forward(make_request((b"Host", b"pub:8080"), (b"X-Forwarded-For", b"6.6.6.6"),
                                  (b"X-Forwarded-Proto", b"https"), (b"Forwarded", b"for=1.2.3.4"),
                                  (b"X-Forwarded-Host", b"evil")))
    assert value(fields, b"x-forwarded-for") == b"192.0.2.7"
    assert value(fields, b"x-forwarded-proto") == b"http"
    assert value(fields, b"x-forwarded-host") == b"pub:8080"
    assert value(fields, b"x-forwarded-port") == b"8080"
    assert value(fields, b"forwarded") is None
    assert value(fields, b"host") == b"10.1.1.1:3000"


def test_forwarding_fields_from_a_trusted_proxy_are_kept_and_extended():
    fields = forward(make_request((b"Host", b"pub"), (b"X-Forwarded-For", b"1.1.1.1"),
                                  (b"X-Forwarded-For", b"2.2.2.2"),
                                  (b"X-Forwarded-Proto", b"https"),
                                  (b"X-Forwarded-Host", b"www.example"),
                                  (b"X-Forwarded-Port", b"443")), trusted=True)
    assert value(fields, b"x-forwarded-for") == b"1.1.1.1, 2.2.2.2, 192.0.2.7"
    assert value(fields, b"x-forwarded-proto") == b"https"
    assert value(fields, b"x-forwarded-host") == b"www.example"
    assert value(fields, b"x-forwarded-port") == b"443"


def test_via_is_appended_with_the_received_version():
    fields = forward(make_request((b"Via", b"1.1 cdn"), version="1.0"))
    assert value(fields, b"via") == b"1.1 cdn, 1.0 rex"


def test_preserve_host_and_default_port():
    req = make_request((b"Host", b"public.example"))
    assert value(forward(req, preserve_host=True), b"host") == b"public.example"
    up80 = Upstream(url="http://app", scheme="http", host="app", port=80)
    assert value(forward(req, up80), b"host") == b"app"


def test_framing_is_rex_s_own():
    fields = forward(make_request((b"Content-Length", b"5"), method="POST", content_length=5))
    assert value(fields, b"content-length") == b"5"
    fields = forward(make_request((b"Transfer-Encoding", b"chunked"), method="POST",
                                  chunked=True))
    assert value(fields, b"transfer-encoding") == b"chunked"
    assert value(fields, b"content-length") is None


def test_websocket_upgrade_fields_are_set_again():
    fields = forward(make_request((b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"),
                                  (b"Sec-WebSocket-Key", b"k")), websocket=True)
    assert value(fields, b"connection") == b"upgrade"
    assert value(fields, b"upgrade") == b"websocket"
    assert value(fields, b"sec-websocket-key") == b"k"


@pytest.mark.parametrize(("method", "sent", "forwarded", "here"), [
    ("TRACE", b"3", b"2", False),
    ("OPTIONS", b"1", b"0", False),
    ("OPTIONS", b"0", None, True),
    ("TRACE", b"0", None, True),
    ("GET", b"0", b"0", False),  # only TRACE and OPTIONS use Max-Forwards (§7.6.2)
])
def test_max_forwards(method, sent, forwarded, here):
    req = make_request((b"Max-Forwards", sent), method=method)
    assert headers.max_forwards_exhausted(req) is here
    if not here:
        assert value(forward(req), b"max-forwards") == forwarded


def test_trace_echo_hides_credentials():
    req = make_request((b"Host", b"a"), (b"Cookie", b"s=1"), (b"Authorization", b"x"),
                       method="TRACE")
    assert headers.trace_echo(req) == b"TRACE /x HTTP/1.1\r\nHost: a\r\n\r\n"


def resp(*fields: tuple[bytes, bytes], status: int = 200, version: str = "1.1") -> Response:
    return Response(status, version, list(fields), None, False, True, status == 101)


def client_head(upstream: Response, *, length: int | None = None, keep_alive: bool = True,
                version: str = "1.1", location=None) -> bytes:
    """The head the client gets: the proxy's fields, framed by the HTTP/1 writer."""
    mode, keep_alive = h1write.framing("GET", version, upstream.status, length, keep_alive)
    return h1write.head(upstream.status, headers.response_fields(upstream, location), mode=mode,
                        length=length, keep_alive=keep_alive, version=version)


def test_response_head_drops_hop_by_hop_and_sets_framing():
    first, fields = parse(client_head(
        resp((b"Connection", b"X-Internal"), (b"X-Internal", b"1"), (b"Keep-Alive", b"5"),
             (b"Transfer-Encoding", b"chunked"), (b"Date", b"then"), (b"Via", b"1.0 app")),
        length=3, keep_alive=False))
    assert first == b"HTTP/1.1 200 OK"
    assert names(fields) == [b"date", b"via", b"content-length", b"connection"]
    assert value(fields, b"via") == b"1.0 app, 1.1 rex"
    assert value(fields, b"connection") == b"close"


def test_response_head_adds_date_when_missing_and_keep_alive_for_http10():
    _, fields = parse(client_head(resp(), length=0, version="1.0"))
    assert value(fields, b"date").endswith(b"GMT")
    assert value(fields, b"connection") == b"keep-alive"


def test_interim_head():
    upstream = resp((b"Link", b"</a.css>"), (b"Connection", b"x"), status=103)
    head = h1write.interim(103, headers.interim_fields(upstream))
    assert head == b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"


def test_trailer_block():
    assert h1write.trailer_block([]) == b"0\r\n\r\n"
    assert h1write.trailer_block([(b"X-Sum", b"1")]) == b"0\r\nX-Sum: 1\r\n\r\n"


PUBLIC = b"https://www.example"


@pytest.mark.parametrize(("up", "location", "prefix", "expected"), [
    # Paths forwarded unchanged: only the origin changes.
    (UP, b"http://10.1.1.1:3000/login?next=/x", None, b"https://www.example/login?next=/x"),
    (UP, b"http://10.1.1.1:3000", None, b"https://www.example/"),
    (UP, b"HTTP://10.1.1.1:3000/a", None, b"https://www.example/a"),
    (UP, b"http://10.1.1.1:30001/a", None, b"http://10.1.1.1:30001/a"),
    (UP, b"http://elsewhere/a", None, b"http://elsewhere/a"),
    (UP, b"/login", None, b"/login"),
    # strip_prefix: the public prefix is put back.
    (UP, b"http://10.1.1.1:3000/login", b"/app", b"https://www.example/app/login"),
    # A base path maps back to the public prefix, in both spellings.
    (UP_BASE, b"http://app:3000/v2/items/1", b"/api", b"https://www.example/api/items/1"),
    (UP_BASE, b"/v2/items/1", b"/api", b"/api/items/1"),
    (UP_BASE, b"/v2", b"/api", b"/api"),
    (UP_BASE, b"/v2x/items", b"/api", b"/v2x/items"),
    (UP_BASE, b"/other", b"/api", b"/other"),
    (UP_BASE, b"http://app:3000/other", b"/api", b"https://www.example/other"),
    (UP_BASE, b"//app:3000/v2/x", b"/api", b"//app:3000/v2/x"),
])
def test_rewrite_location(up, location, prefix, expected):
    base = up.base_path.encode()
    got = headers.rewrite_location(location, headers.upstream_origins(up), base, PUBLIC, prefix)
    assert got == expected


def test_location_goes_through_the_callback():
    fields = headers.response_fields(resp((b"Location", b"http://in/x")),
                                     location=lambda v: v.replace(b"in", b"out"))
    assert value(fields, b"location") == b"http://out/x"


def test_trusted_proxies():
    trusted = headers.TrustedProxies(["10.0.0.0/8", "::1/128"])
    assert "10.2.3.4" in trusted and "::1" in trusted
    assert "11.0.0.1" not in trusted and "not-an-ip" not in trusted and "" not in trusted
    assert "10.0.0.1" not in headers.TrustedProxies([])


def test_is_websocket():
    up = make_request((b"Upgrade", b"WebSocket"), upgrade=True)
    assert is_websocket(up)
    assert not is_websocket(make_request((b"Upgrade", b"h2c"), upgrade=True))
    assert not is_websocket(make_request((b"Upgrade", b"websocket")))


def test_the_field_name_table_maps_each_name_to_its_lower_case():
    # The header loops look names up here instead of calling lower(): a wrong entry
    # would forward a hop-by-hop field or drop an end-to-end one.
    assert LOWER and all(lower == name.lower() for name, lower in LOWER.items())
    assert LOWER[b"Content-Length"] == LOWER[b"content-length"] == b"content-length"


def test_fields_outside_the_table_are_judged_as_before():
    req = make_request((b"Host", b"h"), (b"CONNECTION", b"x-gone"), (b"X-Gone", b"1"),
                       (b"TRANSFER-encoding", b"chunked"), (b"X-Kept", b"2"))
    fields = forward(req)
    assert value(fields, b"x-kept") == b"2"
    assert value(fields, b"x-gone") is None and value(fields, b"transfer-encoding") is None
    resp = Response(200, "1.1", [(b"SERVER", b"s"), (b"KEEP-ALIVE", b"timeout=5"),
                                 (b"dAtE", b"d")], 0, False, True, False, b"OK")
    out = headers.response_fields(resp)
    assert out == [(b"SERVER", b"s"), (b"dAtE", b"d"), (b"Via", b"1.1 rex")]
