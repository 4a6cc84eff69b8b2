"""How pp's Servers share the "pp" logger without doubling messages.

pp adds at most one handler (_Handler) to the "pp" logger, whatever the
number of live Servers. Each Server registers a target there: its logstream
and loglevel. A record tied to a Server (extra={"pp_server": key}) goes to
that Server's target, any other record to the newest Server's. A Server that
was not given a logstream, created while the application has configured
logging (the "pp" logger or the root logger has a handler), registers
nothing: the application's handlers show pp's messages. The logger's level
is lowered to the Servers' loglevel only while pp's handler is there, and
the level pp found is put back when the last target goes.

Called from the threads that create and destroy Servers; emit runs in the
thread that logs (the callback thread, for the engine's lines)."""
import logging
import sys
import threading

_log = logging.getLogger("pp")
_lock = threading.Lock()   # guards _handler, _saved_level and the targets
_handler = None            # the one handler pp added, or None
_saved_level = None        # the "pp" logger's level before pp changed it
_FORMAT = "%(asctime)s pp %(levelname)s %(message)s"
_formatter = None          # made once: Formatter() validates _FORMAT, ~1 ms


class _Handler(logging.Handler):
    """The one handler pp puts on its logger; targets maps a Server's key
    to (stream, level, explicit), newest last. explicit: the Server was
    given its logstream, so its records are written even when the
    application has since configured the root logger."""

    def __init__(self):
        super().__init__(logging.NOTSET)
        global _formatter
        self.targets = {}
        if _formatter is None:  # (under _lock: attach makes the handler)
            _formatter = logging.Formatter(_FORMAT)
        self.setFormatter(_formatter)

    def emit(self, record):
        """Write record to its Server's stream (or the newest Server's),
        at that Server's level; skipped for an implicit stream when the
        root logger, which the record reaches too, has handlers now."""
        targets = self.targets
        if not targets:
            return
        key = getattr(record, "pp_server", None)
        t = targets.get(key) if key is not None else None
        if t is None:
            t = next(reversed(targets.values()))
        stream, level, explicit = t
        if record.levelno < level:
            return
        if not explicit and _log.propagate and logging.root.handlers:
            return  # the application's handlers show it: never twice
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def app_configured():
    """Whether the application has configured logging: the "pp" logger has
    a handler that is not pp's, or the root logger has one."""
    return any(h is not _handler for h in _log.handlers) or \
        bool(logging.root.handlers)


def attach(key, stream, level):
    """Register a Server's target (stream None: sys.stderr, and nothing when
    the application configured logging). Returns whether one was added."""
    global _handler, _saved_level
    explicit = stream is not None
    with _lock:
        if not explicit and app_configured():
            return False
        if _handler is None:
            _handler = _Handler()
            _saved_level = _log.level
            _log.addHandler(_handler)
        _handler.targets[key] = (stream if explicit else sys.stderr,
                                 int(level), explicit)
        _set_level()
        return True


def detach(key):
    """Remove a Server's target; with the last one, remove pp's handler and
    restore the logger level pp found."""
    global _handler, _saved_level
    with _lock:
        if _handler is None or _handler.targets.pop(key, None) is None:
            return
        if _handler.targets:
            _set_level()
            return
        _log.removeHandler(_handler)
        _handler = None
        _log.setLevel(_saved_level)
        _saved_level = None


def _set_level():
    """The logger's level: the lowest loglevel of the targets, unless the
    level pp found lets those records through already. Holds _lock."""
    want = min(t[1] for t in _handler.targets.values())
    if _saved_level == logging.NOTSET or _saved_level > want:
        _log.setLevel(want)
    else:
        _log.setLevel(_saved_level)


def reset():
    """Remove pp's handler and restore the logger's level (for tests, and
    for a process that forks after creating Servers)."""
    global _handler, _saved_level
    with _lock:
        if _handler is not None:
            _log.removeHandler(_handler)
            _log.setLevel(_saved_level)
        _handler = None
        _saved_level = None
