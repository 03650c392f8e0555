"""Upstream timeouts of a service (services.*.timeouts) through the real sidecar: the connect
timeout against an endpoint that never completes the handshake, alone and with a retry to
the next endpoint. (The request timeout, the idle timeout of pooled connections and the
downstream header-read timeout have their tests in test_upstream_failures.py,
test_upstream_pool.py and test_bad_requests.py; per-try timeouts in test_retries.py.)"""
import socket

import pytest

from tests.support.servers import HttpUpstream
from tests.support.services import access_log, request, service, with_access_log
from tests.support.sidecar_process import SidecarProcess


@pytest.fixture
def unanswered_endpoint():
    """A loopback port whose SYNs go unanswered: a listener with a full accept queue (one
    connection waiting, never accepted) drops them, so a connect hangs until it times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(2):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(listener.getsockname())
        fillers.append(s)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        probe.connect(listener.getsockname())
        pytest.skip("the kernel completed a handshake past a full accept queue")
    except (socket.timeout, BlockingIOError):
        pass
    finally:
        probe.close()
    yield listener.getsockname()
    for s in fillers:
        s.close()
    listener.close()


def test_connect_timeout_is_503_uf_after_the_service_connect_timeout(unanswered_endpoint, tmp_path):
    log = tmp_path / "access.log"
    svc = service("svc", [unanswered_endpoint], timeouts={"connect": "200ms"})
    with SidecarProcess(extra=with_access_log({"services": [svc]}, log)) as sc:
        status, _, body, took = request(sc.outbound, "svc.local", "/hangs")
        assert (status, body) == (503, b"upstream connect error\n")
        assert 0.19 <= took < 0.5, took
        (line,) = access_log(log, 1)
        assert line["response_flags"] == "UF"
        assert "connect timeout" in sc.log()


def test_connect_timeout_then_the_next_endpoint(unanswered_endpoint):
    with HttpUpstream() as good:
        svc = service("svc", [unanswered_endpoint, good], timeouts={"connect": "200ms"},
                      retries={"attempts": 1, "on": ["connect-failure"]})
        with SidecarProcess(extra={"services": [svc]}) as sc:
            status, _, _, took = request(sc.outbound, "svc.local", "/next")
            assert status == 200 and 0.19 <= took < 0.6, took
            assert good.paths() == ["/next"]
