"""Find and import the WSGI apps a config names (``wsgi:module:callable``).

May: extend ``sys.path`` and import modules; the worker calls this once at boot,
after monkey-patching, so an app that cannot be imported fails the worker's
start with a message naming the route. May not: run in the master (importing
app code there would import it before the patch and into every fork), touch
sockets, or import gevent.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config.model import Config

App = Callable[[dict, Callable], Iterable[bytes]]


class WSGILoadError(Exception):
    """An app that cannot be loaded; the message names the route's destination."""


def load_app(spec: str) -> App:
    """Import ``module:callable`` (or call ``module:factory()``) and return the app."""
    module_name, _, attr = spec.partition(":")
    factory = attr.endswith("()")
    name = attr[:-2] if factory else attr
    module = importlib.import_module(module_name)
    try:
        app = getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}") from None
    if factory:
        app = app()
    if not callable(app):
        raise TypeError(f"{name} is a {type(app).__name__}, not a WSGI callable")
    return app


def extend_sys_path(config: Config) -> None:
    """Put the ``pythonpath:`` entries, then the config file's directory, first on sys.path."""
    dirs = list(config.pythonpath)
    if config.path:
        dirs.append(os.path.dirname(config.path))
    for path in reversed(dirs):
        if path not in sys.path:
            sys.path.insert(0, path)


def load_route_app(spec: str, load: Callable[[str], App] = load_app) -> App:
    """``load(spec)``, with any failure re-raised as WSGILoadError naming the destination."""
    try:
        return load(spec)
    except (Exception, SystemExit) as exc:  # whatever the app's import does, name the route
        raise WSGILoadError(f"wsgi:{spec}: {type(exc).__name__}: {exc}") from exc
