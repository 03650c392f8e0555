"""Outbound services in a test sidecar's config, requests to them, and what the sidecar
says about them (access log lines, metrics)."""
import json
import threading
import time

from tests.support.http_client import RawClient


def endpoint(upstream) -> str:
    """host:port of a test server (anything with `.address`) or of a (host, port) tuple."""
    host, port = upstream.address if hasattr(upstream, "address") else upstream
    return "%s:%d" % (host, port)


def service(name, upstreams, host=None, **settings) -> dict:
    """A `services` entry matched by Host `host` (default NAME.local) with these endpoints."""
    svc = {"name": name, "match": [host or name + ".local"], "endpoints": [endpoint(u) for u in upstreams]}
    svc.update(settings)
    return svc


def with_access_log(extra: dict, path) -> dict:
    extra = dict(extra)
    extra["telemetry"] = {"access_log": {"path": str(path)}}
    return extra


def request(address, host, path="/", method="GET", body=b"", headers=(), timeout=10):
    """(status, headers, body, seconds) of one request on a new connection."""
    lines = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers)
    if body or method in ("POST", "PUT", "PATCH"):
        lines += b"content-length: %d\r\n" % len(body)
    started = time.monotonic()
    with RawClient(address, timeout=timeout) as c:
        c.send(b"%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n%s" % (
            method.encode(), path.encode(), host.encode(), lines, body))
        status, response_headers, response_body = c.read_response(method)
    return status, response_headers, response_body, time.monotonic() - started


def concurrent(fn, args_list, stagger=0.0, timeout=30):
    """Runs fn(*args) for each args in threads (started `stagger` s apart); the results in
    order (an exception in place of a result that raised)."""
    results = [None] * len(args_list)

    def run(i, args):
        try:
            results[i] = fn(*args)
        except Exception as e:      # returned to the caller's assertion
            results[i] = e

    threads = []
    for i, args in enumerate(args_list):
        threads.append(threading.Thread(target=run, args=(i, args), daemon=True))
        threads[-1].start()
        if stagger:
            time.sleep(stagger)
    for t in threads:
        t.join(timeout)
    return results


def access_log(path, count, timeout=5.0):
    """The first `count` JSON lines of an access log (waits for them to be written)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        except FileNotFoundError:
            lines = []
        if len(lines) >= count or time.monotonic() > deadline:
            assert len(lines) >= count, "%d of %d access log lines: %r" % (len(lines), count, lines)
            return lines[:count]
        time.sleep(0.05)
