"""rex_workers.http.urlpath: what a request path means, and what goes upstream."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rex_workers.http.request import HTTPError
from rex_workers.http.urlpath import PATH_SAFE, normalize, rewrite

NORMALIZED = [
    # raw path, what routing matches
    (b"/", "/"),
    (b"/api/v1/x", "/api/v1/x"),
    (b"/api/", "/api/"),
    (b"/a//b", "/a/b"),
    (b"//a///b//", "/a/b/"),
    (b"//", "/"),
    (b"/a/./b", "/a/b"),
    (b"/./a", "/a"),
    (b"/a/.", "/a/"),
    (b"/a/b/../c", "/a/c"),
    (b"/a/b/..", "/a/"),
    (b"/a/..", "/"),
    (b"/a/../../a/..", None),  # climbs above the root on the way: refused
    (b"/a/...", "/a/..."),  # three dots is a name, not a dot-segment
    (b"/.well-known/acme", "/.well-known/acme"),
    (b"/a/.hidden/", "/a/.hidden/"),
    # Encoded dots and slashes are decoded first, then resolved: no bypass.
    (b"/a/%2e%2e/b", "/b"),
    (b"/a/%2E%2e/b", "/b"),
    (b"/a/%2e/b", "/a/b"),
    (b"/a%2Fb", "/a/b"),
    (b"/a%2f..%2fb", "/b"),
    (b"/a%2F%2Fb", "/a/b"),
    # Decoded exactly once.
    (b"/%252e%252e/x", "/%2e%2e/x"),
    (b"/%25", "/%"),
    (b"/caf%C3%A9/", "/caf\u00e9/"),
    (b"/caf\xc3\xa9", "/caf\u00e9"),
    (b"/a%20b", "/a b"),
]

REFUSED = [
    b"/..",
    b"/../etc/passwd",
    b"/%2e%2e/",
    b"/%2E%2E",
    b"/a/%2e%2e/%2e%2e/x",
    b"/a%2f..%2f..",
    b"/%00",
    b"/a\x00b",
    b"/a%0d%0aSet-Cookie:x",
    b"/a%0a",
    b"/%ff",
    b"/\xff",
    b"/%c0%af",  # overlong "/"
    b"/%c0%ae%c0%ae/",  # overlong ".."
    b"/%ed%a0%80",  # a UTF-16 surrogate
    b"/%e2%82",  # truncated sequence
    b"/%zz",
    b"/%2",
    b"/a%",
    b"",
    b"a/b",
    b"*",
    b"http://example.com/",
]


@pytest.mark.parametrize(("raw", "expected"), NORMALIZED)
def test_normalize(raw: bytes, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(HTTPError):
            normalize(raw)
    else:
        assert normalize(raw) == expected


@pytest.mark.parametrize("raw", REFUSED)
def test_normalize_refuses_with_400(raw: bytes) -> None:
    with pytest.raises(HTTPError) as caught:
        normalize(raw)
    assert caught.value.status == 400


REWRITTEN = [
    # raw path, strip_segments, base_path, path sent upstream
    (b"/api/v1/x", 1, "", b"/v1/x"),
    (b"/api", 1, "", b"/"),
    (b"/api/", 1, "", b"/"),
    (b"/api/", 1, "/v2", b"/v2/"),
    (b"/api/x", 1, "/v2", b"/v2/x"),
    (b"/api", 1, "/v2", b"/v2"),
    (b"/api/v1/x/", 2, "/b", b"/b/x/"),
    (b"/", 0, "/v2", b"/v2/"),
    (b"/x", 0, "/v2", b"/v2/x"),
    (b"/x", 0, "/v1/v2", b"/v1/v2/x"),
    # Nothing to change: byte for byte, even when not in normal form (SPEC §4).
    (b"/a//b/../c", 0, "", b"/a//b/../c"),
    (b"/a%2Fb", 0, "", b"/a%2Fb"),
    # The client's own encoding is kept when segments line up.
    (b"/api/a%20b", 1, "", b"/a%20b"),
    (b"/api/%7Euser", 1, "", b"/%7Euser"),
    (b"/.well-known/x", 1, "/w", b"/w/x"),
    # Not in normal form: rewritten from the normalized path, encoded again.
    (b"/api//x", 1, "", b"/x"),
    (b"//api/x", 1, "", b"/x"),
    (b"/api/./x", 1, "/v2", b"/v2/x"),
    (b"/x/../api/q", 1, "/b", b"/b/q"),
    (b"/api%2Fv1/x", 1, "", b"/v1/x"),
    (b"/api/%2e/a%20b/%25", 1, "", b"/a%20b/%25"),
    (b"/api/./caf\xc3\xa9?", 1, "", b"/caf%C3%A9%3F"),
]


@pytest.mark.parametrize(("raw", "strip", "base", "expected"), REWRITTEN)
def test_rewrite(raw: bytes, strip: int, base: str, expected: bytes) -> None:
    assert rewrite(raw, strip, base) == expected


# Pieces that exercise every branch of normalize: dots, encoded dots and
# slashes, bad escapes, control bytes, invalid and overlong UTF-8.
_PIECE_TEXT = b"/ a b . .. %2e %2E %2f %2F % %2 %25 %00 \x00 \r %0a %c0%af %ff \xff \xc3\xa9 ~ ?"
_PIECES = st.sampled_from([*_PIECE_TEXT.split(b" "), b" "])
_RAW = st.one_of(
    st.lists(_PIECES, max_size=12).map(lambda parts: b"/" + b"".join(parts)),
    st.binary(max_size=40).map(lambda data: b"/" + data),
)


@given(_RAW)
def test_normalize_is_safe_and_stable(raw: bytes) -> None:
    try:
        path = normalize(raw)
    except HTTPError as error:  # the only exception allowed out
        assert error.status == 400
        return
    assert path.startswith("/")
    for bad in ("//", "/./", "/../", "\x00", "\r", "\n"):
        assert bad not in path
    assert not path.endswith(("/.", "/.."))
    # Already normal: encoding it again and normalizing gives it back.
    assert normalize(quote(path, safe=PATH_SAFE).encode("ascii")) == path
