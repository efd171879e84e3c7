"""A WSGI application that exercises PEP 3333, wrapped in wsgiref.validate.

Every response goes through Python's own checker: a validator complaint
raises (warnings are errors here) and fails the request, and a complaint
the validator can only make from a destructor (an iterable never closed)
lands in PROBLEMS, which the tests read.

EVENTS records (tag, what, thread ident) for the call, each next() and
close(), for the request tagged by its X-Tag header; wait_for() lets a
test wait for one without sleeping.
"""

import json
import os
import sys
import threading
import warnings
import wsgiref.validate

warnings.simplefilter("error", wsgiref.validate.WSGIWarning)

PROBLEMS = []
EVENTS = []
_changed = threading.Condition()


def _unraisable(info):
    PROBLEMS.append("%s: %s (%r)" % (info.exc_type.__name__, info.exc_value, info.object))


sys.unraisablehook = _unraisable


def thread_name():
    """The OS thread's name (the layer names its workers)."""
    try:
        with open("/proc/self/task/%d/comm" % threading.get_native_id()) as comm:
            return comm.read().strip()
    except OSError:
        return "?"


def record(tag, what):
    with _changed:
        EVENTS.append((tag, what, threading.get_ident(), thread_name()))
        _changed.notify_all()


def events(tag):
    """[(what, thread ident, thread name)] of the request tagged `tag`."""
    with _changed:
        return [(what, ident, name) for (t, what, ident, name) in EVENTS if t == tag]


def wait_for(tag, what, count=1, timeout=20.0):
    """The events of `tag` once `what` happened `count` times."""
    def seen():
        return sum(1 for (t, w, _, _) in EVENTS if t == tag and w == what) >= count
    with _changed:
        if not _changed.wait_for(seen, timeout):
            raise TimeoutError("%s: no %s in %s" % (tag, what, events(tag)))
    return events(tag)


class Recorded:
    """An iterable over `chunks` with close(), recording both."""

    def __init__(self, tag, chunks):
        self.tag = tag
        self.chunks = iter(chunks)

    def __iter__(self):
        return self

    def __next__(self):
        record(self.tag, "next")
        return next(self.chunks)

    def close(self):
        record(self.tag, "close")


def forever(size):
    chunk = b"x" * size
    while True:
        yield chunk


TEXT = [("Content-Type", "text/plain")]

# Per-thread state, as Django keeps its database connections.
_local = threading.local()


def raw(environ, start_response):
    path = environ["PATH_INFO"]
    tag = environ.get("HTTP_X_TAG", "")
    record(tag, "call")
    inp = environ["wsgi.input"]
    # The validator's wrapper allows read(n) only; PEP 3333 also asks for
    # read() with no argument, which the unwrapped stream answers.
    bare = getattr(inp, "input", inp)

    if path == "/hello":
        start_response("200 OK", TEXT + [("Content-Length", "5")])
        return [b"hello"]
    if path == "/list":
        start_response("200 OK", TEXT)
        return [b"one ", b"list"]
    if path == "/recorded":
        n = int(environ.get("QUERY_STRING") or "3")
        start_response("200 OK", TEXT)
        return Recorded(tag, [b"chunk%d\n" % i for i in range(n)])
    if path == "/environ" or tag == "env":
        keys = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int, tuple))}
        keys["wsgi.input"] = type(bare).__name__
        keys["thread"] = threading.get_ident()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(keys).encode()]
    if path == "/echo":
        # read(n) in small pieces, then read() for the rest.
        first = inp.read(5)
        rest = bare.read()
        start_response("200 OK", TEXT)
        return [b"%d:%s|%s" % (len(first) + len(rest), first, rest)]
    if path == "/stream-in":
        first = inp.read(5)
        record(tag, "got " + first.decode())
        rest = bare.read()
        start_response("200 OK", TEXT)
        return [first + rest]
    if path == "/lines":
        first = inp.readline()
        limited = inp.readline(3)
        two = inp.readlines(1)
        rest = list(inp)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps([first.decode(), limited.decode(), [l.decode() for l in two],
                            [l.decode() for l in rest]]).encode()]
    if path == "/errors":
        errors = environ["wsgi.errors"]
        errors.write("a line to wsgi.errors\n")
        errors.writelines(["two ", "lines\n"])
        errors.flush()
        start_response("200 OK", TEXT)
        return [b"logged"]
    if path == "/write":
        write = start_response("200 OK", TEXT)
        write(b"one,")
        write(b"two,")
        return Recorded(tag, [b"three"])
    if path == "/late":
        def late():
            record(tag, "next")
            start_response("201 Created", TEXT)
            yield b"started late"
        return late()
    if path == "/exc-before":
        start_response("200 OK", TEXT)
        try:
            raise ValueError("changed my mind")
        except ValueError:
            start_response("503 Service Unavailable", TEXT, sys.exc_info())
        return [b"sorry"]
    if path == "/exc-after":
        def after():
            yield b"part one"
            try:
                raise ValueError("too late")
            except ValueError:
                start_response("500 Internal Server Error", TEXT, sys.exc_info())
            yield b"never"
        start_response("200 OK", TEXT)
        return after()
    if path == "/raise":
        raise RuntimeError("a secret the client must not see")
    if path == "/raise-later":
        def later():
            yield b"first"
            raise RuntimeError("after the head")
        start_response("200 OK", TEXT)
        return Recorded(tag, later())
    if path == "/length":
        body = [b"a" * 100, b"b" * 100, b"c" * 56]
        start_response("200 OK", TEXT + [("Content-Length", "256")])
        return Recorded(tag, body + [b"never asked for"])
    if path == "/short":
        start_response("200 OK", TEXT + [("Content-Length", "10")])
        return Recorded(tag, [b"12345", b"678"])
    if path == "/file":
        name = environ["QUERY_STRING"]
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(os.path.getsize(name)))])
        return environ["wsgi.file_wrapper"](open(name, "rb"), 4096)
    if path == "/forever":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Recorded(tag, forever(int(environ.get("QUERY_STRING") or "65536")))
    if path == "/local":
        _local.count = getattr(_local, "count", 0) + 1
        start_response("200 OK", TEXT)
        return [b"%d %d" % (_local.count, threading.get_ident())]
    if path == "/twice":
        start_response("200 OK", TEXT)
        start_response("201 Created", TEXT)
        return [b"twice"]
    if path == "/not-bytes":
        start_response("200 OK", TEXT)
        return Recorded(tag, [b"bytes, then ", "a str"])
    if path == "/no-start":
        return [b"no head"]
    start_response("404 Not Found", TEXT)
    return [b"not found: %s %s" % (environ["SCRIPT_NAME"].encode("latin-1"), path.encode("latin-1"))]


application = wsgiref.validate.validator(raw)
def problems():
    return list(PROBLEMS)
