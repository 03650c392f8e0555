"""`python -m benchmarks.otlp_sink PORT`: an OTLP/HTTP collector stand-in for benchmarks.

Accepts `POST /v1/traces` and answers 200 with an empty ExportTraceServiceResponse
(full success) without decoding, so the sidecar's export path runs as it would against
a healthy collector while the sink costs little. `GET /` answers `ok` (readiness) and
`GET /stats` the requests and bytes received, as JSON. It runs in its own process, so
its CPU is not counted in the sidecar's.
"""
import http.server
import json
import socketserver
import sys


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, status, body, ctype="application/x-protobuf"):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        self.server.requests += 1
        self.server.bytes += n
        self._answer(200 if self.path == "/v1/traces" else 404, b"")

    def do_GET(self):
        if self.path == "/stats":
            body = json.dumps({"requests": self.server.requests, "bytes": self.server.bytes})
            self._answer(200, body.encode(), "application/json")
        else:
            self._answer(200, b"ok\n", "text/plain")


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    server = _Server(("127.0.0.1", int(sys.argv[1])), _Handler)
    server.requests = 0
    server.bytes = 0
    server.serve_forever()


if __name__ == "__main__":
    main()
