"""Parsed request heads and route configs for the policy stage tests."""
from fastpath import parser as P
from sidecar.config.model import RouteMatch


def request(target=b"/", method=b"GET", *fields):
    data = method + b" " + target + b" HTTP/1.1\r\nHost: app\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
    head = P.MessageHead(100)
    end = P.new_request_parser().feed_bytes(head, data)
    assert end == len(data), (end, head.error_status, head.error_reason_text)
    return head


def match(**kw):
    return RouteMatch(**kw)
