"""A local OTLP/HTTP trace receiver for the tests: a real HTTP server on loopback that
decodes each `POST /v1/traces` with the official protobuf bindings (opentelemetry-proto),
so what the sidecar sends is checked by an implementation other than its own.

    with OtlpReceiver() as rx:
        ... rx.endpoint is "http://127.0.0.1:PORT" ...
        spans = rx.wait_for_spans(3)

Misbehaviour on purpose: `fail_next(n, status)` answers the next n requests with
`status`; `delay` holds every answer that many seconds; `reject_spans` answers 200 with a
partial_success rejecting that many spans.
"""
import http.server
import socketserver
import threading
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse,
)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        rx = self.server.receiver
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with rx.lock:
            rx.posts.append({"path": self.path, "headers": dict(self.headers.items()),
                             "bytes": len(body), "time": time.monotonic()})
            failing = rx._failures > 0
            if failing:
                rx._failures -= 1
            status = rx._failure_status
        if rx.delay:
            time.sleep(rx.delay)
        if failing:
            self._answer(status, b"", [("retry-after", rx.retry_after)] if rx.retry_after else [])
            return
        if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
            self._answer(415 if self.path == "/v1/traces" else 404, b"")
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        response = ExportTraceServiceResponse()
        with rx.lock:
            rx.requests.append(request)
            for rs in request.resource_spans:
                resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        rx.spans.append(Span(span, resource, ss.scope.name))
            if rx.reject_spans:
                response.partial_success.rejected_spans = rx.reject_spans
                response.partial_success.error_message = "rejected by the test"
            rx.changed.notify_all()
        self._answer(200, response.SerializeToString(), [("content-type", "application/x-protobuf")])

    def _answer(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, str(v))
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Span:
    """One received span, with its attributes as a dict and ids as hex text."""

    def __init__(self, pb, resource, scope):
        self.pb = pb
        self.resource = resource
        self.scope = scope
        self.trace_id = pb.trace_id.hex()
        self.span_id = pb.span_id.hex()
        self.parent_id = pb.parent_span_id.hex() or None
        self.name = pb.name
        self.kind = pb.kind
        self.attributes = {kv.key: _value(kv.value) for kv in pb.attributes}
        self.status_code = pb.status.code
        self.status_message = pb.status.message
        self.trace_state = pb.trace_state
        self.flags = pb.flags
        self.start_ns = pb.start_time_unix_nano
        self.end_ns = pb.end_time_unix_nano

    def __repr__(self):
        return "Span(%s %s/%s parent=%s %r)" % (self.name, self.trace_id, self.span_id,
                                                self.parent_id, self.attributes)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class OtlpReceiver:
    def __init__(self, host="127.0.0.1"):
        self.server = _Server((host, 0), _Handler)
        self.server.receiver = self
        self.address = (host, self.server.server_address[1])
        self.endpoint = "http://%s:%d" % self.address
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.posts = []          # every POST: path, headers, size, time
        self.requests = []       # decoded ExportTraceServiceRequest messages
        self.spans = []          # every received Span, in order
        self.delay = 0.0
        self.retry_after = None
        self.reject_spans = 0
        self._failures = 0
        self._failure_status = 503
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def fail_next(self, n, status=503, retry_after=None):
        with self.lock:
            self._failures = n
            self._failure_status = status
            self.retry_after = retry_after

    def wait_for_spans(self, n, timeout=10.0):
        """The spans received once there are at least n (fails after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.spans) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("expected %d spans, got %d: %r" % (n, len(self.spans), self.spans))
                self.changed.wait(left)
            return list(self.spans)

    def spans_of_trace(self, trace_id):
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
