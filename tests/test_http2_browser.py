"""A real browser over HTTP/2: headless Chromium loads a page of many assets from Rex.

Rex serves a TLS instance (a trustme certificate; Chromium is told to ignore
certificate errors rather than trust the test CA, which would need its NSS
database) with HTTP/2 on by default. The page references 30 small files under
``public`` and fetches one URL proxied to an upstream this test starts.
Chromium is driven over the DevTools protocol (``--remote-debugging-port``, a
websocket-client connection to the page): ``Network.responseReceived``
carries the protocol each response came over, and its connection id shows
that the assets shared connections (multiplexed) instead of opening one each.

Skipped, saying why, where Chromium is not installed (``.ci/run`` installs
the Debian package where it may). Chromium and every process it forked are
ended by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import trustme
from conftest import alive, children, free_port, wait_for

websocket = pytest.importorskip("websocket", reason="websocket-client is a test dependency")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package `chromium`)")

KINDS = {"css": '<link rel="stylesheet" href="/assets/{}">',
         "js": '<script src="/assets/{}"></script>',
         "svg": '<img src="/assets/{}" alt="">'}
ASSETS = [f"a{n:02d}.{kind}" for n, kind in enumerate(list(KINDS) * 10)]  # 30 files
PROXIED = "/api/data.json"
LOAD_TIMEOUT = 15.0


def write_site(public: Path) -> None:
    (public / "assets").mkdir(parents=True)
    bodies = {"css": "body {{ margin: {}px }}\n", "js": "window.a{} = 1;\n",
              "svg": '<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="1"/>\n'}
    tags = []
    for n, name in enumerate(ASSETS):
        kind = name.rsplit(".", 1)[1]
        (public / "assets" / name).write_text(bodies[kind].format(n + 1))
        tags.append(KINDS[kind].format(name))
    # fetch(): the proxied URL is loaded like an API call a page makes.
    page = ("<!doctype html><html><head><title>h2</title>\n" + "\n".join(tags)
            + f"\n</head><body><script>fetch('{PROXIED}')</script></body></html>\n")
    (public / "index.html").write_text(page)


class Chromium:
    """A headless Chromium with a fresh profile and a DevTools port, ended by pid."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        argv = [CHROMIUM, "--headless=new", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--ignore-certificate-errors",
                f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
        if os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.seen: set[int] = set()

    def devtools_port(self) -> int:
        """The port Chromium chose, from the file it writes once DevTools listens."""
        path = self.profile / "DevToolsActivePort"

        def written() -> int | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode}:\n"
                                     + (self.profile.parent / "chromium.log").read_text())
            lines = path.read_text().splitlines() if path.exists() else []
            return int(lines[0]) if lines and lines[0].isdigit() else None

        return wait_for(written, 15, what="chromium's DevTools port")

    def page_socket(self) -> str:
        port = self.devtools_port()

        def page() -> str | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = json.load(r)
            return next((t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"),
                        None)

        return wait_for(page, 10, what="a page target")

    def descendants(self) -> set[int]:
        found, todo = set(), [self.proc.pid]
        while todo:
            for child in children(todo.pop()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        self.seen |= found
        return found

    def stop(self) -> None:
        self.descendants()  # the zygote and renderers, before the browser can orphan them
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.log.close()


class DevTools:
    """Just enough of the DevTools protocol: commands by id, events collected on the way."""

    def __init__(self, url: str) -> None:
        # Without an Origin field: Chromium refuses origins it was not told to allow.
        self.ws = websocket.create_connection(url, timeout=5, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})
            self.events.append(message)

    def collect_until(self, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.events):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; events so far: {[e['method'] for e in self.events]}"
            self.ws.settimeout(left)
            self.events.append(json.loads(self.ws.recv()))

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def chromium(tmp_path):
    browser = Chromium(tmp_path / "profile")
    yield browser
    browser.stop()


def responses(events: list[dict], port: int) -> dict[str, dict]:
    """Path -> the response Chromium received for it, for URLs of Rex's origin."""
    origin = f"https://127.0.0.1:{port}"
    found = {}
    for event in events:
        if event.get("method") == "Network.responseReceived":
            response = event["params"]["response"]
            if response["url"].startswith(origin):
                found[response["url"][len(origin):]] = response
    return found


def test_chromium_loads_a_page_of_assets_over_h2(rex, upstream, chromium, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    public = tmp_path / "public"
    write_site(public)
    api = upstream()
    port = free_port()
    rex.write(f"""\
        server:
          instances:
            - port: {port}
              host: 127.0.0.1
              public: {public}
              tls: {{cert: {cert_path}, key: {key_path}}}
              routes:
                - {{path: /api, destination: "{api.url}"}}
        """)
    rex.start(ports=(port,))

    tools = DevTools(chromium.page_socket())
    try:
        tools.call("Network.enable")
        wanted = {"/", *(f"/assets/{name}" for name in ASSETS), PROXIED}
        tools.call("Page.navigate", url=f"https://127.0.0.1:{port}/")
        tools.collect_until(lambda events: wanted <= responses(events, port).keys(),
                            LOAD_TIMEOUT)
    finally:
        tools.close()

    got = responses(tools.events, port)
    assert {path: got[path]["status"] for path in wanted} == dict.fromkeys(wanted, 200)
    assert {path: got[path]["protocol"] for path in wanted} == dict.fromkeys(wanted, "h2")
    # Multiplexed: 32 responses over a connection or two, not one connection each.
    assert len({got[path]["connectionId"] for path in wanted}) <= 2
    assert [r["path"] for r in api.requests] == [PROXIED]
