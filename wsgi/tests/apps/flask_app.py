"""A small Flask application, served by the gateway in tests/flask.rs."""

import threading

from flask import Flask, Response, request, stream_with_context, url_for

app = Flask(__name__)


@app.get("/")
def index():
    return "hello from flask"


@app.get("/url")
def url():
    # Built from SCRIPT_NAME: the mount point shows here.
    return url_for("index", _external=False)


@app.post("/echo")
def echo():
    return request.get_data()


@app.post("/form")
def form():
    return "name=%s" % request.form["name"]


@app.get("/thread")
def thread():
    return {"thread": threading.get_ident(), "worker": request.environ["tower_affinity.worker"]}


@app.get("/stream")
def stream():
    def lines():
        for i in range(3):
            yield "line %d of %s\n" % (i, request.args.get("who", "nobody"))

    return Response(stream_with_context(lines()), mimetype="text/plain")


@app.get("/boom")
def boom():
    raise RuntimeError("a secret flask keeps to itself")
