"""The application every server runs in compare.py: a hello world, a
10 KB body, and an endless stream for the slow readers."""

HELLO = b"Hello, World!"
TEN_KB = b"x" * 10240
CHUNK = b"s" * 65536


def stream():
    while True:
        yield CHUNK


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/10k":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10240")])
        return [TEN_KB]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return stream()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]
