"""Active HTTP health checks of a service's endpoints (the `health_check` section).

Each endpoint is probed every `interval` (jittered by up to 10% either way, so the
workers' and the endpoints' probes spread out): a GET of `path` with `Connection: close`
on a connection of its own, opened through the endpoint pool's connect path
(`EndpointPool.connect_side`) but outside the pool and its limits. A probe passes when
the status is one of `expected_statuses` within `timeout` (connect and response head);
anything else (refused, reset, timed out, malformed, another status) fails it. The
results go to the ServiceCluster, which marks the endpoint unhealthy after `unhealthy`
failures in a row and healthy again after `healthy` passes in a row; load balancing
skips unhealthy endpoints, and a service with none left answers 503 UH.

Each worker probes on its own loop (state is per worker, like outlier detection): with
N workers an endpoint sees about N probes per interval. The first probe of an endpoint
goes out within a tenth of the interval of the config taking effect (at most 1 s).
Probes cost a task per endpoint and a connection per probe, nothing on the request path.
"""
import asyncio
import logging
import random
import time

log = logging.getLogger("sidecar.health_check")

__all__ = ["HealthChecker"]

USER_AGENT = b"bpf-sidecar-health-check"
MAX_STATUS_LINE = 1024


class _Probe(asyncio.Protocol):
    """One probe's connection: writes the request, reads the status line."""

    def __init__(self, request: bytes):
        self.request = request
        self.buf = b""
        self.status = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        if self.status.done():
            return
        self.buf += data
        end = self.buf.find(b"\r\n")
        if end < 0:
            if len(self.buf) > MAX_STATUS_LINE:
                self.status.set_exception(ValueError("status line too long"))
            return
        parts = self.buf[:end].split(b" ", 2)
        if (len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0")
                or len(parts[1]) != 3 or not parts[1].isdigit()):
            self.status.set_exception(ValueError("malformed status line"))
            return
        self.status.set_result(int(parts[1]))

    def connection_lost(self, exc):
        if not self.status.done():
            self.status.set_exception(ConnectionError("closed before a status line"))


class HealthChecker:
    """The probes of one ServiceCluster's endpoints, on `loop`."""

    def __init__(self, loop, cluster, settings, rng=None):
        self.loop = loop
        self.cluster = cluster
        self.settings = settings
        self.rng = rng or random.Random()
        host = settings.host or cluster.name
        if ":" in host:
            host = "[%s]" % host
        self.request = b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nConnection: close\r\n\r\n" % (
            settings.path.encode(), host.encode(), USER_AGENT)
        self.tasks = []

    def start(self):
        for index in range(len(self.cluster.endpoints)):
            self.tasks.append(self.loop.create_task(self._run(index)))

    def stop(self):
        for task in self.tasks:
            task.cancel()
        self.tasks = []

    async def _run(self, index):
        interval = self.settings.interval
        await asyncio.sleep(self.rng.uniform(0, min(interval / 10, 1.0)))
        while True:
            passed, why = await self.probe(index)
            if not passed:
                ep = self.cluster.endpoints[index]
                log.debug("service %s: health check of %s:%d failed: %s",
                          self.cluster.name, ep.host, ep.port, why)
            self.cluster.health_result(index, passed, time.monotonic())
            await asyncio.sleep(interval * self.rng.uniform(0.9, 1.1))

    async def probe(self, index):
        """(passed, why) of one probe of endpoint `index`."""
        settings = self.settings
        pool = self.cluster.pool_of(index)
        transport = None
        deadline = self.loop.time() + settings.timeout
        try:
            transport, probe = await asyncio.wait_for(
                pool.connect_side(lambda: _Probe(self.request)), settings.timeout)
            status = await asyncio.wait_for(probe.status, max(0.0, deadline - self.loop.time()))
        except asyncio.TimeoutError:
            return False, "timed out after %gs" % settings.timeout
        except (OSError, ValueError) as e:
            return False, str(e) or type(e).__name__
        finally:
            if transport is not None:
                transport.abort()
        for low, high in settings.expected_statuses:
            if low <= status <= high:
                return True, None
        return False, "status %d" % status
