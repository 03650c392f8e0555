"""The kernel families of a NetnsSidecar's /metrics, scraped inside its namespace: what a
Prometheus server would see, parsed with prometheus_client's own parser."""
import http.client
import time

from prometheus_client.parser import text_string_to_metric_families


def _get(host, port):
    c = http.client.HTTPConnection(host, port, timeout=5)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def scrape_text(sc):
    """The exposition text of one scrape of `sc`."""
    host, _, port = sc.config["telemetry"]["metrics"]["listen"].rpartition(":")
    status, text = sc.ns.call(_get, host.strip("[]"), int(port))
    assert status == 200, text
    return text


def scrape(sc):
    """{sample name: [(labels dict, value)]} of one scrape of `sc`."""
    text = scrape_text(sc)
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def traffic(sc, peer=None):
    """{(direction, peer, port, protocol): (bytes, packets)} from sidecar_kernel_*_total,
    only `peer`'s when given."""
    m = scrape(sc)
    out = {}
    for name, index in (("sidecar_kernel_bytes_total", 0), ("sidecar_kernel_packets_total", 1)):
        for labels, value in m.get(name, ()):
            if peer is not None and labels["peer"] != peer:
                continue
            key = (labels["direction"], labels["peer"], int(labels["port"]), labels["protocol"])
            out.setdefault(key, [0, 0])[index] = int(value)
    return {k: tuple(v) for k, v in out.items()}


def drops(sc):
    """{reason: packets} from sidecar_kernel_drops_total."""
    return {labels["reason"]: int(v) for labels, v in scrape(sc).get("sidecar_kernel_drops_total", ())}


def wait_for(predicate, timeout=5.0, interval=0.05):
    """Polls `predicate()` until it returns a true value (returned) or the time is up (the
    last value is returned: the caller's assertion shows it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
