"""Configuration text for the processes under test: nginx and Rex.

Pure functions from ports and directories to file contents. Every path nginx
would otherwise take from its compiled-in prefix (pid file, error log, temp
directories) points inside the bench's own directory, so no root-owned
default path is touched and two benches can run side by side.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

# Upstream keep-alive connections nginx keeps per worker; Rex's pool is
# unbounded per upstream, and 64 matches the busiest scenario's clients.
UPSTREAM_KEEPALIVE = 64
# nginx closes a keep-alive connection after 1,000 requests by default; Rex
# never does, so lift the limit to compare the proxies, not reconnects.
KEEPALIVE_REQUESTS = 1_000_000
WORKER_CONNECTIONS = 16384  # Rex's default per-worker cap (model.Limits)


def nginx_temp_dir(prefix: str, name: str) -> str:
    """Parent of an instance's temp paths: nginx creates only their last level."""
    return os.path.join(prefix, f"{name}-temp")


def nginx_argv(nginx: str, prefix: str, name: str) -> list[str]:
    """Foreground nginx on ``prefix/name.conf``.

    ``-e`` moves the error log nginx opens before it reads the config away
    from the compiled-in /var/log path as well.
    """
    return [nginx, "-p", prefix, "-c", os.path.join(prefix, f"{name}.conf"),
            "-e", os.path.join(prefix, f"{name}-error.log"), "-g", "daemon off;"]


def _nginx_main(prefix: str, name: str, http_body: str) -> str:
    """The parts of an nginx.conf every instance shares, around ``http_body``."""
    temp = nginx_temp_dir(prefix, name)
    temps = "\n".join(
        f"    {kind}_temp_path {temp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
worker_processes 1;
pid {prefix}/{name}.pid;
error_log {prefix}/{name}-error.log warn;
events {{
    worker_connections {WORKER_CONNECTIONS};
}}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests {KEEPALIVE_REQUESTS};
{temps}
{http_body}
}}
"""


def nginx_backend(prefix: str, name: str, port: int, root: str) -> str:
    """The origin both proxies forward to: a plain static server with sendfile.

    JSON files go out as ``application/json`` (the compression scenario's type),
    everything else as ``default_type``.
    """
    return _nginx_main(prefix, name, f"""\
    types {{
        application/json json;
    }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}""")


def nginx_proxy(prefix: str, name: str, port: int, backend_port: int, extra: str = "",
                listen: str = "") -> str:
    """The reference proxy: nginx with keep-alive to the backend.

    ``proxy_http_version 1.1`` and an empty ``Connection`` header are what
    upstream keep-alive needs in nginx; buffering stays at nginx's defaults,
    as most deployments leave it. ``extra``: more directives for the server;
    ``listen``: the listen directive and what goes with it (``nginx_h2``).
    """
    listen = listen or f"listen 127.0.0.1:{port};"
    return _nginx_main(prefix, name, f"""\
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_requests {KEEPALIVE_REQUESTS};
    }}
    server {{
        {listen}{extra}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""")


def nginx_gzip_proxy(prefix: str, name: str, port: int, backend_port: int, level: int,
                     types: Sequence[str]) -> str:
    """The proxy with ``gzip on``: the compression scenario's reference.

    ``gzip_vary`` as Rex always sends Vary; ``gzip_proxied any`` so a request that
    came through another proxy (a Via field) is compressed too, as by Rex.
    """
    return nginx_proxy(prefix, name, port, backend_port, f"""
        gzip on;
        gzip_comp_level {level};
        gzip_types {' '.join(types)};
        gzip_vary on;
        gzip_proxied any;""")


def nginx_h2(prefix: str, name: str, port: int, cert: str, key: str, *,
             backend_port: int = 0, root: str = "") -> str:
    """nginx with TLS and HTTP/2 (ALPN h2): a proxy to the backend, or ``root`` served.

    ``listen ... ssl http2`` is the spelling of nginx before 1.25.1, which took
    ``http2 on;`` instead (and still reads the old one, with a warning).
    """
    listen = (f"listen 127.0.0.1:{port} ssl http2;\n        ssl_certificate {cert};\n"
              f"        ssl_certificate_key {key};")
    if not root:
        return nginx_proxy(prefix, name, port, backend_port, listen=listen)
    return _nginx_main(prefix, name, f"""\
    server {{
        {listen}
        root {root};
    }}""")


def nginx_static(prefix: str, name: str, port: int, root: str) -> str:
    """The reference static server: ``root`` with sendfile, like the backend."""
    return nginx_backend(prefix, name, port, root)


def _rex(instance: dict) -> str:
    """A Rex config shaped like the nginx ones: one worker, no access log.

    Written as JSON, which is YAML too, so no quoting rule can bite.
    """
    config = {
        "workers": 1,
        "logging": {"access": "off"},
        "graceful_timeout": 2,
        "server": {"instances": [{"host": "127.0.0.1", **instance}]},
    }
    return json.dumps(config, indent=2) + "\n"


def rex_proxy(port: int, backend_port: int) -> str:
    return _rex({"port": port,
                 "routes": [{"path": "/", "destination": f"http://127.0.0.1:{backend_port}"}]})


def rex_gzip_proxy(port: int, backend_port: int, level: int, types: Sequence[str]) -> str:
    """The proxy with compression on, gzip only, at nginx's level and types."""
    config = json.loads(rex_proxy(port, backend_port))
    config["compress"] = {"algorithms": ["gzip"], "level": level, "types": list(types)}
    return json.dumps(config, indent=2) + "\n"


def rex_static(port: int, root: str) -> str:
    return _rex({"port": port, "public": root})


def rex_wsgi(port: int, app: str, pythonpath: str, as_root: bool = False) -> str:
    """One ``wsgi:`` route for the whole site, the app imported from ``pythonpath``.

    ``as_root``: the bench runs as root, and Rex refuses to run an app as root
    unless told to (``user: root``); gunicorn, the other side, would run it so.
    """
    config = json.loads(_rex({"port": port,
                              "routes": [{"path": "/", "destination": f"wsgi:{app}"}]}))
    config["pythonpath"] = [pythonpath]
    if as_root:
        config["user"] = "root"
    return json.dumps(config, indent=2) + "\n"


def gunicorn_argv(python: str, port: int, app: str) -> list[str]:
    """gunicorn with its defaults but for the gevent worker class, one worker, loopback."""
    return [python, "-m", "gunicorn", "-k", "gevent", "-w", "1", "-b", f"127.0.0.1:{port}", app]


def rex_h2(port: int, cert: str, key: str, *, backend_port: int = 0, root: str = "") -> str:
    """Rex on TLS, where HTTP/2 is on by default (ALPN h2): a proxy, or ``root`` served."""
    config = json.loads(rex_static(port, root) if root else rex_proxy(port, backend_port))
    config["server"]["instances"][0]["tls"] = {"cert": cert, "key": key}
    return json.dumps(config, indent=2) + "\n"
