"""Packaging for Rex. `pip install .` gives the `rex` command and `python -m rex`."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="rex-proxy",
    version="0.1.0",
    description="Reverse proxy, load balancer and static file server on gevent",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    py_modules=["rex"],
    packages=[*find_packages(include=["rex_workers", "rex_workers.*", "rex_static"]), "rex_conf"],
    # conf/ is the starter config, pages and examples; shipped as the package
    # `rex_conf` so a wheel install has them (read with importlib.resources).
    package_dir={"rex_conf": "conf"},
    package_data={"rex_conf": ["*.yaml", "pages/*", "public/*", "examples/*", "systemd/*"]},
    install_requires=[
        "gevent>=23.9",
        "httptools>=0.6",
        "pyyaml>=6.0",
        "cerberus>=1.3,<2",
        "docopt-ng>=0.9",
        "setproctitle>=1.3",
        "watchfiles>=0.21",  # rex wsgi --reload (README: dependencies and why)
        "bcrypt>=4.1",  # auth: basic (README: dependencies and why)
        "h2>=4.1,<5",  # HTTP/2 frames and HPACK (README: dependencies and why)
    ],
    extras_require={
        # Brotli for `compress` (README: dependencies and why); gzip needs nothing.
        "brotli": ["brotli>=1.1"],
        # rate_limits.store: redis:// (README: dependencies and why)
        "redis": ["redis>=5"],
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "requests>=2.31",
            "websocket-client>=1.7",
            "trustme>=1.1",
            "cryptography",  # trustme's own; the tests also encrypt a key with it
            "flask>=3.0",
            "django>=4.2",
            "ruff>=0.5",
            "brotli>=1.1",  # the tests decode br answers and run compress with br
            "redis>=5",  # the shared-budget tests run against a real redis-server
            "httpx[http2]>=0.27",  # a real HTTP/2 client for the http2 tests
        ],
    },
    entry_points={"console_scripts": ["rex = rex:main"]},
)
