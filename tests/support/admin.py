"""HTTP calls to a test sidecar's admin API, /metrics and health listener."""
import json
import urllib.error
import urllib.request


def address(sc, key):
    """host:port of `key` ("admin", "metrics", "health") in a SidecarProcess's config."""
    if key == "admin":
        return sc.config["admin"]["listen"]
    return sc.config["telemetry"][key]["listen"]


def call(sc, key, path, method="GET", body=None, headers=None, timeout=10):
    """(status, headers, body bytes) of one request; 4xx/5xx are returned, not raised."""
    req = urllib.request.Request("http://%s%s" % (address(sc, key), path), data=body,
                                 method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def admin_json(sc, path, method="GET"):
    status, _, body = call(sc, "admin", path, method)
    assert status == 200, (status, body)
    return json.loads(body)


def scrape(sc, accept=None):
    status, headers, body = call(sc, "metrics", "/metrics", headers={"Accept": accept} if accept else None)
    assert status == 200, status
    return headers.get("Content-Type"), body.decode()
