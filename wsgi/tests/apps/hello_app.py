"""The smallest WSGI application, for tests/command.rs: found on sys.path
because the command is started in this directory."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    if environ["PATH_INFO"] == "/slow":
        # A stream in flight when the command is told to stop: its second
        # chunk waits for the rest of the request body.
        def slow():
            yield b"first,"
            yield b"second:" + environ["wsgi.input"].read()
        return slow()
    return [b"hello from the command"]
