"""A file whose parsed contents are reloaded when it changes (JWKS, API key files).

The worker calls `check()` about once a second from its timer sweep (never per request).
A change is seen by the file's identity (inode, size, mtime), so an atomic replace
(rename over, the Kubernetes ConfigMap/Secret symlink swap) and an in-place write are both
picked up. A file that later goes bad (unreadable, not parseable) keeps the last good
value, and the problem is logged once per change, not once per check.
"""
import logging
import os

log = logging.getLogger("sidecar.policy")

__all__ = ["WatchedFile"]


def _identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class WatchedFile:
    """`value` is `parse(path)` of the last good version; `listeners` are called with the
    new value after each successful reload. The first load raises ValueError: a config
    that names a bad file is refused."""

    def __init__(self, path: str, parse, what: str):
        self.path = path
        self.parse = parse
        self.what = what
        self.identity = _identity(path)
        self.value = parse(path)
        self.generation = 1
        self.listeners = []

    def check(self) -> bool:
        """Reloads the file if it changed; True when a new value took effect."""
        identity = _identity(self.path)
        if identity == self.identity:
            return False
        self.identity = identity
        try:
            value = self.parse(self.path)
        except ValueError as e:
            log.error("%s %s changed but cannot be used (%s): keeping the last good version",
                      self.what, self.path, e)
            return False
        self.value = value
        self.generation += 1
        log.info("%s %s reloaded", self.what, self.path)
        for listener in self.listeners:
            listener(value)
        return True
