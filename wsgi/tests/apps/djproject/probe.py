"""Records, for each database connection, the thread that opened it and
the thread that closed it, so that tests/django.rs can check they match."""

import itertools
import threading

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

EVENTS = []
_changed = threading.Condition()
# A serial per connection opened: id() of a closed one is soon reused.
_serials = itertools.count(1)


def _thread_name():
    try:
        with open("/proc/self/task/%d/comm" % threading.get_native_id()) as comm:
            return comm.read().strip()
    except OSError:
        return "?"


def _record(what, connection):
    with _changed:
        EVENTS.append((what, connection.probe_serial, threading.get_ident(), _thread_name()))
        _changed.notify_all()


def install():
    def opened(sender, connection, **kwargs):
        connection.probe_serial = next(_serials)
        _record("open", connection)

    connection_created.connect(opened, weak=False)
    close = BaseDatabaseWrapper.close

    def closing(self):
        if self.connection is not None:
            _record("close", self)
        return close(self)

    BaseDatabaseWrapper.close = closing


def settled(timeout=20.0):
    """The events, once every connection opened has been closed."""
    def done():
        opens = sum(1 for e in EVENTS if e[0] == "open")
        return opens == sum(1 for e in EVENTS if e[0] == "close")
    with _changed:
        if not _changed.wait_for(done, timeout):
            raise TimeoutError("connections left open: %r" % EVENTS)
        return list(EVENTS)
