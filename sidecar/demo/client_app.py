"""The demo's client app: runs in pod A (its app cgroup, as an unprivileged user) and calls
pod B's server by pod B's address, knowing nothing of sidecars.

    python3 -I client_app.py HOST PORT CONNECTIONS DURATION_S [LABEL]

`CONNECTIONS` keep-alive HTTP/1.1 connections each send a GET, wait for the whole response,
and send the next (closed loop) until DURATION_S has passed; a failed connection counts an
error and is opened again. Once a second it prints one JSON line to stdout:

    {"elapsed": s, "requests": n, "errors": n, "interval": {"requests", "p50_us", "p90_us",
     "p99_us"}, "last_error": text or null}

and at the end one more with "final": true and the percentiles over the whole run
(p50, p90, p99, p99.9). LABEL is not used: it names the process (`pgrep -f LABEL`). Standard library only: it runs under the system python3 as the
app's user, who may not read the project's virtualenv.
"""
import asyncio
import json
import sys
import time


def percentiles(values, points=(50, 90, 99)):
    """{"p50_us": ..., ...} of latencies in seconds (nearest rank), None when empty."""
    ordered = sorted(values)
    out = {}
    for p in points:
        key = "p%s_us" % str(p).replace(".", "")
        if not ordered:
            out[key] = None
            continue
        rank = min(len(ordered) - 1, max(0, int(round(p / 100.0 * len(ordered))) - 1))
        out[key] = round(ordered[rank] * 1e6, 1)
    return out


class Client:
    def __init__(self, host, port):
        self.address = (host, port)
        self.request = ("GET / HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: sidecar-demo-client\r\n\r\n"
                        % (host, port)).encode()
        self.requests = 0
        self.errors = 0
        self.last_error = None
        self.interval = []           # latencies (s) since the last report
        self.latencies = []          # every latency of the run

    async def exchange(self, reader, writer):
        """One request and its whole response; the status code."""
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await reader.readexactly(length)
        return status

    async def connection(self, stop_at):
        writer = None
        while time.monotonic() < stop_at:
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.address), 5)
                started = time.perf_counter()
                status = await asyncio.wait_for(self.exchange(reader, writer), 10)
                elapsed = time.perf_counter() - started
                self.requests += 1
                if status != 200:
                    self.errors += 1
                    self.last_error = "HTTP %d" % status
                self.interval.append(elapsed)
                self.latencies.append(elapsed)
            except (OSError, ValueError, IndexError, asyncio.TimeoutError,
                    asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                self.errors += 1
                self.last_error = "%s: %s" % (type(e).__name__, e)
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.1)
        if writer is not None:
            writer.close()

    def report(self, started, final=False):
        line = {"elapsed": round(time.monotonic() - started, 3), "requests": self.requests,
                "errors": self.errors, "last_error": self.last_error}
        interval = {"requests": len(self.interval)}
        interval.update(percentiles(self.interval))
        line["interval"] = interval
        self.interval = []
        if final:
            line["final"] = True
            line.update(percentiles(self.latencies, (50, 90, 99, 99.9)))
        print(json.dumps(line), flush=True)

    async def run(self, connections, duration):
        started = time.monotonic()
        stop_at = started + duration
        tasks = [asyncio.ensure_future(self.connection(stop_at)) for _ in range(connections)]
        next_report = started + 1.0
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=max(0.0, next_report - time.monotonic()))
            if time.monotonic() >= next_report:
                self.report(started)
                next_report += 1.0
        await asyncio.gather(*tasks)
        self.report(started, final=True)


def main(argv):
    host, port, connections, duration = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    asyncio.run(Client(host, port).run(connections, duration))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
