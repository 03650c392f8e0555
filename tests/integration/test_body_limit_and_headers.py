"""max_request_body and header edits on a real `sidecar run`: 413 for a declared length
and for a chunked body as it streams, without the excess reaching the app; set/add/remove
with %{...} values on requests and responses."""
import json
import socket
import threading
import time

import pytest

from tests.support.http_client import RawClient
from tests.support.jwt_tokens import AUDIENCE, ISSUER, TestKeys
from tests.support.servers import HttpApp, ScriptedServer
from tests.support.sidecar_process import SidecarProcess

LIMIT = 1000
KEYS = TestKeys()


def test_413_on_content_length_before_the_body_is_read():
    routes = [{"name": "small", "max_request_body": LIMIT}]
    with HttpApp() as app, SidecarProcess(app=app.address, extra={"routes": routes}) as sc:
        with RawClient(sc.inbound, timeout=5) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % LIMIT + b"x" * LIMIT)
            assert c.read_response()[0] == 200
            c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n"
                   % (LIMIT + 1))
            status, headers, body = c.read_response()
            assert status == 413 and headers["connection"] == "close"
            assert body == b"request body too large\n"
            assert c.is_closed()
        assert len(app.requests) == 1


def test_413_on_a_streaming_chunked_body_and_the_excess_never_reaches_the_app():
    received = bytearray()
    done = threading.Event()

    def app(conn, server):
        # Reads whatever the sidecar forwards until it closes or aborts the connection.
        conn.settimeout(10)
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received.extend(chunk)
        except OSError:
            pass
        done.set()

    routes = [{"name": "small", "max_request_body": LIMIT}]
    with ScriptedServer(app) as upstream, SidecarProcess(app=upstream.address, extra={"routes": routes}) as sc:
        with RawClient(sc.inbound, timeout=5) as c:
            c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            c.send(b"190\r\n" + b"a" * 400 + b"\r\n")          # 400 bytes: within the limit
            time.sleep(0.2)
            c.send(b"190\r\n" + b"b" * 400 + b"\r\n")          # 800
            time.sleep(0.2)
            c.send(b"190\r\n" + b"c" * 400 + b"\r\n")          # 1200: over
            status, headers, body = c.read_response()
            assert status == 413 and headers["connection"] == "close"
            assert c.is_closed()
        assert done.wait(5), "the upstream connection was not ended"
    assert b"a" * 400 in received and b"c" * 8 not in received
    assert not received.endswith(b"0\r\n\r\n")                # the app never saw a whole request


@pytest.fixture(scope="module")
def edits(tmp_path_factory):
    d = tmp_path_factory.mktemp("edits")
    jwks = d / "jwks.json"
    KEYS.write_jwks(jwks, ["ec-1"])
    routes = [{
        "name": "edited",
        "authn": {"jwt": {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": str(jwks)}},
        "headers": {
            "request": {"set": {"x-user": "%{principal}", "x-source": "sidecar", "x-org": "%{claim:org.id}"},
                        "add": {"x-client": "%{client_ip}", "x-trace": "id=%{request_id} route=%{route}"},
                        "remove": ["x-internal", "authorization"]},
            "response": {"set": {"x-request-id": "%{request_id}"}, "add": {"x-served-by": "sidecar"},
                         "remove": ["server"]},
        }}]
    with HttpApp() as app, SidecarProcess(app=app.address, extra={"routes": routes}) as sc:
        yield sc, app


def test_request_and_response_header_edits_with_variables(edits):
    sc, app = edits
    token = KEYS.token("ec-1", sub="alice", org={"id": "acme\r\nx-evil: 1"})
    with RawClient(sc.inbound, timeout=5) as c:
        c.send(b"GET /headers HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer %s\r\nX-Internal: secret\r\n"
               b"X-Source: client\r\nX-Request-Id: rid-123\r\n\r\n" % token.encode())
        status, headers, body = c.read_response()
    assert status == 200
    seen = json.loads(body)["headers"]
    names = [k for k, _ in seen]
    assert "x-internal" not in names and "authorization" not in names
    assert ["x-user", "alice"] in seen and ["x-source", "sidecar"] in seen
    assert "x-evil" not in names and "x-org" not in names      # a claim with CR LF is left out
    assert names.count("x-source") == 1
    assert ["x-client", "127.0.0.1"] in seen
    assert ["x-trace", "id=rid-123 route=edited"] in seen
    assert headers["x-request-id"] == "rid-123"
    assert headers["x-served-by"] == "sidecar" and "server" not in headers


def test_a_generated_request_id_is_the_same_upstream_and_in_the_response(edits):
    sc, app = edits
    token = KEYS.token("ec-1", sub="bob", org={"id": 42})
    with RawClient(sc.inbound, timeout=5) as c:
        c.send(b"GET /headers HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer %s\r\n\r\n" % token.encode())
        status, headers, body = c.read_response()
    seen = dict(json.loads(body)["headers"])
    assert len(seen["x-request-id"]) == 36
    assert headers["x-request-id"] == seen["x-request-id"]
    assert seen["x-trace"] == "id=%s route=edited" % seen["x-request-id"]
    assert seen["x-org"] == "42"
