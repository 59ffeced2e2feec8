"""Static files for Rex: zero-copy, cached, and never outside the root.

``StaticSite(root, opts)`` is the whole public interface; see docs/static.md.
Importing this package has no side effects and does not import gevent: the
policy modules (``resolve``, ``conditional``, ``negotiate``, ``mime``,
``cache``, ``representation``) stay importable in the master. ``StaticSite``
(which brings the gevent pump along) loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .site import StaticSite

__all__ = ["StaticSite"]


def __getattr__(name: str) -> Any:
    # PEP 562: "from rex_static import StaticSite" imports the site only then.
    if name == "StaticSite":
        from .site import StaticSite

        return StaticSite
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
