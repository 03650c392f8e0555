"""Span export: OTLP/HTTP (binary protobuf) batches from a bounded queue, on a thread.

The event loop thread hands each sampled exchange's span, already encoded
(fastpath/otlp.pyx), to `SpanExporter.push`, which only appends to a bounded deque: a
full queue drops the span and counts it (sidecar_tracing_spans_dropped_total). It never
waits and never does I/O. The exporter thread wakes when a batch is full or every
`interval`, frames up to `batch_size` spans into one ExportTraceServiceRequest and POSTs
it to the collector on a kept-alive connection.

Collector answers (OTLP/HTTP): a 2xx exports the batch (spans a partial_success rejects
count as failed); 429, 502, 503, 504, a connection error or a timeout is retried with
exponential backoff and full jitter (Retry-After honoured, up to MAX_BACKOFF), at most
`max_attempts` times; any other answer fails the batch at once
(sidecar_tracing_spans_failed_total). While a batch is retried new spans queue behind it,
and drop once the queue is full: a collector that is down or slow loses spans, never
requests.

`close()` sends what is queued within a deadline (drain), one attempt per batch, and
stops; with `wait=False` (a reload that replaced the exporter) it returns at once and the
thread finishes alone.
"""
import base64
import collections
import http.client
import logging
import random
import socket
import threading
import time
import urllib.parse

from fastpath.otlp import decode_partial_success, export_request

log = logging.getLogger("sidecar.tracing")

DEFAULT_QUEUE = 2048            # spans waiting for the exporter; past it they are dropped
DEFAULT_BATCH = 512             # spans per export request
DEFAULT_INTERVAL = 1.0          # seconds between exports when batches do not fill
DEFAULT_TIMEOUT = 10.0          # seconds for one export request (connect + answer)
DEFAULT_ATTEMPTS = 5            # tries per batch
INITIAL_BACKOFF = 0.5           # seconds before the first retry; doubles each time
MAX_BACKOFF = 30.0
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
SCOPE_NAME = "bpf-sidecar"
SCOPE_VERSION = "0.1.0"


def traces_url(endpoint: str):
    """(scheme, host, port, path, authorization header or None) of an OTLP endpoint: a
    URL without a path posts to `/v1/traces` (as OTEL_EXPORTER_OTLP_ENDPOINT does), one
    with a path posts there; `user:password@` becomes Basic authorization. Raises
    ValueError for anything else."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https"):
        raise ValueError("the OTLP endpoint must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("the OTLP endpoint has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError("the OTLP endpoint has a bad port") from None
    path = parts.path if parts.path not in ("", "/") else "/v1/traces"
    if parts.query:
        path += "?" + parts.query
    auth = None
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return parts.scheme, parts.hostname, port, path, auth


class ExportError(Exception):
    """One export request failed; `retryable` says whether to try the batch again."""

    def __init__(self, message, retryable, retry_after=None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class SpanExporter:
    """The bounded span queue of one worker and the thread that exports it."""

    def __init__(self, endpoint: str, resource_attributes, capacity: int = DEFAULT_QUEUE,
                 batch_size: int = DEFAULT_BATCH, interval: float = DEFAULT_INTERVAL,
                 timeout: float = DEFAULT_TIMEOUT, max_attempts: int = DEFAULT_ATTEMPTS,
                 initial_backoff: float = INITIAL_BACKOFF, on_dropped=None, on_exported=None,
                 on_failed=None):
        self.scheme, self.host, self.port, self.path, self.auth = traces_url(endpoint)
        self.endpoint = endpoint
        self.resource_attributes = list(resource_attributes)
        self.capacity = capacity
        self.batch_size = batch_size
        self.interval = interval
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.initial_backoff = initial_backoff
        self.queue = collections.deque()
        self.dropped = 0                # counted here and through the callbacks (metrics)
        self.exported = 0
        self.failed = 0
        self.on_dropped = on_dropped    # each called with a span count
        self.on_exported = on_exported
        self.on_failed = on_failed
        self._conn = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._deadline = None           # monotonic time by which a closing exporter gives up
        self._thread = threading.Thread(target=self._run, name="span-exporter", daemon=True)
        self._thread.start()

    # -- the event loop side ----------------------------------------------------------------

    def push(self, span: bytes):
        """Queues one encoded span; drops (and counts) it when the queue is full."""
        queue = self.queue
        if len(queue) >= self.capacity:
            self.dropped += 1
            if self.on_dropped is not None:
                self.on_dropped(1)
            return
        queue.append(span)
        if len(queue) == self.batch_size:
            self._wake.set()

    def close(self, timeout: float = 5.0, wait: bool = True):
        """Exports what is queued for at most `timeout` seconds, then stops (what is left
        counts as dropped). `wait=False` returns at once."""
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        if wait:
            self._thread.join(timeout + 1.0)

    # -- the exporter thread ----------------------------------------------------------------

    def _run(self):
        # Full batches go at once; a partial one waits for the interval (or the close),
        # so a steady trickle of spans makes one request per interval, not one per span.
        queue = self.queue
        next_flush = time.monotonic() + self.interval
        try:
            while True:
                self._wake.wait(max(0.0, next_flush - time.monotonic()))
                self._wake.clear()
                stopping = self._stopping.is_set()
                while len(queue) >= self.batch_size and not self._past_deadline():
                    self._export(self._take_batch())
                if stopping or time.monotonic() >= next_flush:
                    while queue and not self._past_deadline():
                        self._export(self._take_batch())
                    next_flush = time.monotonic() + self.interval
                if stopping:
                    break
        finally:
            left = len(self.queue)
            if left:
                self.queue.clear()
                self._count_dropped(left)
                log.warning("span exporter stopped with %d spans unsent", left)
            self._close_connection()

    def _take_batch(self):
        batch = []
        queue = self.queue
        while queue and len(batch) < self.batch_size:
            batch.append(queue.popleft())
        return batch

    def _past_deadline(self):
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _export(self, batch):
        body = export_request(self.resource_attributes, SCOPE_NAME, SCOPE_VERSION, batch)
        attempt = 0
        while True:
            attempt += 1
            try:
                rejected, message = self._post(body)
            except ExportError as e:
                # Closing: one attempt per batch, so a collector that is down does not
                # hold up the worker's exit.
                if not e.retryable or attempt >= self.max_attempts or self._stopping.is_set():
                    log.warning("span export to %s failed (%s): %d spans lost", self.endpoint,
                                e, len(batch))
                    self._count_failed(len(batch))
                    return
                if not self._backoff(attempt, e.retry_after):
                    self._count_failed(len(batch))
                    return
                continue
            if rejected:
                log.warning("collector rejected %d of %d spans: %s", rejected, len(batch), message)
                self._count_failed(rejected)
            self._count_exported(len(batch) - rejected)
            return

    def _backoff(self, attempt, retry_after):
        """Sleeps before the next attempt; False when a closing exporter has no time left."""
        delay = min(MAX_BACKOFF, self.initial_backoff * (2 ** (attempt - 1)))
        delay = random.uniform(0, delay)                   # full jitter
        if retry_after is not None:
            delay = min(MAX_BACKOFF, max(delay, retry_after))
        start = time.monotonic()
        if self._deadline is not None and self._deadline - start <= delay:
            return False
        if not self._stopping.wait(delay):
            return True
        # close() came during the sleep: sleep the rest only if its deadline allows.
        now = time.monotonic()
        rest = delay - (now - start)
        if rest > 0:
            if self._deadline - now <= rest:
                return False
            time.sleep(rest)
        return True

    def _request_timeout(self):
        timeout = self.timeout
        if self._deadline is not None:
            timeout = max(0.05, min(timeout, self._deadline - time.monotonic()))
        return timeout

    def _connection(self):
        timeout = self._request_timeout()
        if self._conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            self._conn = cls(self.host, self.port, timeout=timeout)
        else:
            self._conn.timeout = timeout
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
        return self._conn

    def _close_connection(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _post(self, body):
        """One export request; (rejected spans, message) or ExportError."""
        headers = {"Content-Type": "application/x-protobuf", "User-Agent": "bpf-sidecar"}
        if self.auth:
            headers["Authorization"] = self.auth
        conn = self._connection()
        try:
            conn.request("POST", self.path, body, headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException, socket.timeout) as e:
            self._close_connection()
            raise ExportError(f"{type(e).__name__}: {e}", retryable=True) from None
        if resp.will_close:
            self._close_connection()
        if 200 <= resp.status < 300:
            return decode_partial_success(data)
        retry_after = _retry_after(resp.getheader("retry-after"))
        raise ExportError(f"HTTP {resp.status}", retryable=resp.status in RETRYABLE_STATUS,
                          retry_after=retry_after)

    def _count_dropped(self, n):
        self.dropped += n
        if self.on_dropped is not None:
            self.on_dropped(n)

    def _count_exported(self, n):
        self.exported += n
        if self.on_exported is not None and n:
            self.on_exported(n)

    def _count_failed(self, n):
        self.failed += n
        if self.on_failed is not None and n:
            self.on_failed(n)


def _retry_after(value):
    """Seconds of a Retry-After header given in seconds (an HTTP date is ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None
