"""A Flask app that tests/test_wsgi.py serves through Rex (imported only in a worker)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time

from flask import Flask, Response, jsonify, request, send_file, url_for
from gevent import monkey

# Where and how this module was imported: the tests check it happened in a
# worker (not the master) that was already monkey-patched (SPEC §8).
IMPORTED_IN = os.getpid()
PATCHED_BEFORE_IMPORT = monkey.is_module_patched("time") and monkey.is_module_patched("socket")


class TrackedFile(io.FileIO):
    """Remembers where the file position was when the server closed it."""

    closed_at: list[int] = []

    def close(self) -> None:
        if not self.closed:
            TrackedFile.closed_at.append(self.tell())
        super().close()


def create_app() -> Flask:
    app = Flask(__name__)
    # Let exceptions escape the WSGI callable, so Rex's own 500 handling is what runs.
    app.config["PROPAGATE_EXCEPTIONS"] = True
    state = {"active": 0, "peak": 0}
    release = threading.Event()  # a gevent Event once threading is patched

    @app.get("/links")
    def links():
        return jsonify({"self": url_for("links"), "external": url_for("links", _external=True)})

    @app.get("/where")
    def where():
        return jsonify(imported_in=IMPORTED_IN, pid=os.getpid(), ppid=os.getppid(),
                       patched=PATCHED_BEFORE_IMPORT)

    @app.post("/form")
    def form():
        return jsonify(fields=request.form.to_dict(flat=False))

    @app.post("/upload")
    def upload():
        files = {name: {"filename": f.filename, "sha256": hashlib.sha256(f.read()).hexdigest()}
                 for name, f in request.files.items()}
        return jsonify(files=files, fields=request.form.to_dict())

    @app.post("/echo")
    def echo():
        data = request.get_data()
        return jsonify(size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                       content_length=request.environ.get("CONTENT_LENGTH"))

    @app.get("/stream")
    def stream():
        release.clear()

        def parts():
            yield b"first\n"
            yield b"second\n" if release.wait(10) else b"never released\n"

        return Response(parts(), mimetype="text/plain")

    @app.post("/release")
    def release_stream():
        release.set()
        return "released"

    @app.get("/sleep")
    def sleep():
        time.sleep(float(request.args.get("s", "0.5")))  # cooperative once patched
        return "slept"

    @app.get("/busy")
    def busy():
        state["active"] += 1
        state["peak"] = max(state["peak"], state["active"])
        time.sleep(0.2)
        state["active"] -= 1
        return "done"

    @app.route("/peak", methods=["GET", "DELETE"])
    def peak():
        if request.method == "DELETE":
            state["peak"] = 0
        return jsonify(peak=state["peak"])

    @app.get("/boom")
    def boom():
        raise RuntimeError("boom from the flask test app")

    @app.get("/file")
    def file():
        return send_file(TrackedFile(request.args["path"]), mimetype="application/octet-stream")

    @app.get("/file-closed-at")
    def file_closed_at():
        return jsonify(TrackedFile.closed_at)

    return app
