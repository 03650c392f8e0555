"""The manager's small HTTP servers (admin, /metrics, health probes), each on its own
thread, so a slow scrape or a hung client never holds up supervision or a reload.

A server is a table of handlers by path; each handler takes a `Request` and returns
`(status, content_type, body)`. A path answered for some methods answers 405 (with
Allow) to the others, so mutations are never reachable with GET.
"""
import http.server
import json
import logging
import socket
import threading
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("sidecar.httpd")


class Request:
    def __init__(self, method, path, query, headers, body):
        self.method, self.path, self.query, self.headers, self.body = method, path, query, headers, body


def json_body(value, status=200):
    return status, "application/json", (json.dumps(value, indent=2, default=str) + "\n").encode()


def text_body(text, status=200):
    return status, "text/plain; charset=utf-8", (text + "\n").encode()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, handler, routes):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.routes = routes
        super().__init__(address, handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bpf-sidecar"
    sys_version = ""

    def _dispatch(self):
        parts = urlsplit(self.path)
        methods = self.server.routes.get(parts.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if 0 < length <= 1 << 20 else b""
        if methods is None:
            status, ctype, payload = text_body("not found: %s" % parts.path, 404)
            extra = {}
        elif self.command not in methods:
            allowed = ", ".join(sorted(methods))
            status, ctype, payload = text_body("method %s not allowed; use %s" % (self.command, allowed), 405)
            extra = {"Allow": allowed}
        else:
            request = Request(self.command, parts.path, parse_qs(parts.query), self.headers, body)
            try:
                status, ctype, payload = methods[self.command](request)
            except Exception as e:
                log.exception("%s %s failed", self.command, parts.path)
                status, ctype, payload = text_body("internal error: %s" % e, 500)
            extra = {}
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)


class HttpServer:
    """A threaded HTTP server on `address` answering `routes`:
    {path: {method: handler(Request) -> (status, content_type, body)}}."""

    def __init__(self, name, address, routes):
        self.name = name
        self.server = _Server(tuple(address), _Handler, routes)
        self.thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True,
                                       kwargs={"poll_interval": 0.2})

    @property
    def address(self):
        return self.server.server_address[:2]

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
