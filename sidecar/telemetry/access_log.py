"""Access logs: one line per finished exchange, written off the request path.

The fastpath hands each finished exchange to `AccessLog.push` as a tuple of facts (the
order of FACTS; see HttpDownstream.exchange_facts). `push` only appends to a bounded
queue: when the queue is full the line is dropped and counted
(sidecar_access_log_dropped_total), never waited for. A writer thread formats and writes
the queue in batches, so a slow disk or a stalled stdout reader never blocks a request.

Formats: `json` (one object per line, the keys of FIELDS), or a template in which
`%name%` is replaced by a field (`%status% %method% %path%`); Envoy's command operators
are accepted as aliases (`%RESPONSE_CODE%`, `%REQ(:PATH)%`, `%TRACE_ID%`, ...). Missing
values print as `-` in templates and `null` in JSON. `trace_id` and `span_id` are the
exchange's W3C/B3 trace id and the sidecar's span id, so log lines join traces.
"""
import collections
import json
import os
import re
import sys
import threading
import time

from sidecar.telemetry import CACHE_RESULTS, response_flags

FACTS = ("direction", "start", "end", "method", "path", "authority", "request_id", "route",
         "service", "upstream", "status", "flags", "request_bytes", "response_bytes",
         "retries", "client", "principal", "trace", "span", "cache")

# The fields of a line, in JSON key order.
FIELDS = ("start_time", "direction", "method", "path", "authority", "request_id", "route",
          "service", "upstream", "status", "response_flags", "duration_ms", "bytes_received",
          "bytes_sent", "retries", "client", "principal", "trace_id", "span_id", "cache")

ENVOY_ALIASES = {
    "START_TIME": "start_time", "REQ(:METHOD)": "method", "REQ(:PATH)": "path",
    "REQ(:AUTHORITY)": "authority", "REQ(X-REQUEST-ID)": "request_id", "ROUTE_NAME": "route",
    "UPSTREAM_CLUSTER": "service", "UPSTREAM_HOST": "upstream", "RESPONSE_CODE": "status",
    "RESPONSE_FLAGS": "response_flags", "DURATION": "duration_ms",
    "BYTES_RECEIVED": "bytes_received", "BYTES_SENT": "bytes_sent",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": "client",
    "DOWNSTREAM_PEER_PRINCIPAL": "principal", "UPSTREAM_REQUEST_ATTEMPT_COUNT": "retries",
    "TRACE_ID": "trace_id",
}

_PLACEHOLDER = re.compile(r"%([A-Za-z_():\-]+)%")

DEFAULT_QUEUE = 8192        # lines waiting for the writer; past it they are dropped
FLUSH_INTERVAL = 0.05       # seconds between writer wake-ups


def check_format(text: str) -> str:
    """`json`, or a template whose every `%name%` is a known field; raises ValueError."""
    if text == "json":
        return text
    names = _PLACEHOLDER.findall(text)
    if not names:
        raise ValueError("a template needs at least one %field% (or use 'json')")
    for name in names:
        if name not in FIELDS and name not in ENVOY_ALIASES:
            raise ValueError(f"unknown access log field %{name}%; fields: {', '.join(FIELDS)}")
    return text


class Formatter:
    """Turns facts into a line, in the configured format."""

    def __init__(self, fmt: str):
        check_format(fmt)
        self.json = fmt == "json"
        self.template = fmt
        self.wall_offset = time.time() - time.monotonic()
        self.names = ([], [], [])       # inbound routes, outbound routes, services
        self.previous = self.names
        self.applied_at = 0.0

    def set_names(self, inbound_routes, outbound_routes, services, applied_at):
        """The route and service names of the snapshot taking effect at `applied_at`."""
        self.previous = self.names
        self.names = (list(inbound_routes), list(outbound_routes), list(services))
        self.applied_at = applied_at

    def fields(self, facts) -> dict:
        f = dict(zip(FACTS, facts))
        names = self.names if f["start"] >= self.applied_at else self.previous
        direction = f["direction"]
        routes = names[0] if direction == "inbound" else names[1]
        route, service = f["route"], f["service"]
        upstream = f["upstream"]
        trace = f.get("trace")
        span = f.get("span")
        return {
            "start_time": _rfc3339(f["start"] + self.wall_offset),
            "direction": direction,
            "method": _text(f["method"]),
            "path": _text(f["path"]),
            "authority": _text(f["authority"]),
            "request_id": _text(f["request_id"]),
            "route": routes[route] if 0 <= route < len(routes) else None,
            "service": names[2][service] if 0 <= service < len(names[2]) else None,
            "upstream": "%s:%d" % upstream if upstream else None,
            "status": f["status"],
            "response_flags": response_flags(f["flags"]),
            "duration_ms": round((f["end"] - f["start"]) * 1000.0, 3),
            "bytes_received": f["request_bytes"],
            "bytes_sent": f["response_bytes"],
            "retries": f["retries"],
            "client": _text(f["client"]),
            "principal": _text(f.get("principal")),
            # The exchange's trace and the sidecar's span in it: logs join traces on these.
            "trace_id": "%016x%016x" % trace if trace else None,
            "span_id": "%016x" % span if span else None,
            # The response cache's result (hit, miss, revalidated, bypass); null off cache routes.
            "cache": CACHE_RESULTS.get(f.get("cache") or 0),
        }

    def line(self, facts) -> str:
        values = self.fields(facts)
        if self.json:
            return json.dumps(values, separators=(",", ":"))
        return _PLACEHOLDER.sub(lambda m: _plain(values[ENVOY_ALIASES.get(m.group(1), m.group(1))]),
                                self.template)


def _text(value):
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _plain(value) -> str:
    return "-" if value is None else str(value)


def _rfc3339(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + ".%03dZ" % int(wall % 1 * 1000)


class AccessLog:
    """The bounded queue and its writer thread (one per worker process)."""

    def __init__(self, path: str, fmt: str, on_drop=None, capacity: int = DEFAULT_QUEUE):
        self.formatter = Formatter(fmt)
        self.path = path
        self.capacity = capacity
        self.queue = collections.deque()
        self.dropped = 0
        self.written = 0
        self.on_drop = on_drop              # called with no argument per dropped line
        self._wake = threading.Event()
        self._stop = False
        self._out = self._open(path)
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(path):
        if path == "stdout":
            return sys.stdout
        if path == "stderr":
            return sys.stderr
        return open(path, "a", buffering=1 << 16)

    def push(self, facts):
        """Queues one exchange's facts; drops (and counts) it when the queue is full."""
        if len(self.queue) >= self.capacity:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
            return
        self.queue.append(facts)

    def _run(self):
        while not self._stop:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            self._drain()
        self._drain()

    def _drain(self):
        lines = []
        queue = self.queue
        while queue:
            try:
                lines.append(self.formatter.line(queue.popleft()))
            except IndexError:
                break
        if lines:
            try:
                self._out.write("\n".join(lines) + "\n")
                self._out.flush()
                self.written += len(lines)
            except (OSError, ValueError):
                self.dropped += len(lines)

    def close(self):
        """Writes what is queued, stops the writer, closes a file it opened."""
        self._stop = True
        self._wake.set()
        self._thread.join(5)
        if self._out not in (sys.stdout, sys.stderr):
            self._out.close()
