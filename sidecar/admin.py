"""The admin API (SPEC.md: 127.0.0.1:15000 only) and the health-probe listener (15021).

    GET  /healthz        the manager is alive
    GET  /readyz         200 when listeners are up, kernel state attached (when
                         configured) and a config is loaded; 503 with what is missing
    GET  /config_dump    the running config in the file's layout, secrets redacted
    GET  /stats          counters and workers as JSON (what `sidecar stats` shows)
    GET  /logging        the log level;  PUT /logging?level=debug (or {"level": ...})
    POST /reload         reload the config file (same as SIGHUP); 200, or 400 with the errors
    POST /drain          stop accepting, finish in-flight; /readyz turns 503; stays up
    POST /quitquitquit   drain, then exit 0 (for Jobs whose app has finished)

Mutations answer 405 to GET. Handlers run on the server's threads and hand anything that
changes state to the manager's event loop.
"""
import json
import time

from sidecar.httpd import json_body, text_body

LEVELS = ("debug", "info", "warning", "error")
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie",
                            "x-api-key", "api-key"})
REDACTED = "[redacted]"


def redact(config: dict) -> dict:
    """The config dict with secret material replaced by "[redacted]": the TLS private key
    path, credentials in URLs, and values set on credential headers."""
    tls = config.get("tls") or {}
    if tls.get("key"):
        tls["key"] = REDACTED
    tracing = (config.get("telemetry") or {}).get("tracing") or {}
    endpoint = tracing.get("otlp_endpoint")
    if isinstance(endpoint, str) and "@" in endpoint.split("/")[2 if "//" in endpoint else 0]:
        scheme, _, rest = endpoint.partition("//")
        tracing["otlp_endpoint"] = scheme + "//" + REDACTED + "@" + rest.split("@", 1)[1]
    for route in config.get("routes") or []:
        for side in ("request", "response"):
            edits = ((route.get("headers") or {}).get(side) or {}).get("set") or {}
            for name in edits:
                if name.lower() in SECRET_HEADERS:
                    edits[name] = REDACTED
    return config


def admin_routes(manager):
    """The admin API's handlers, bound to `manager`."""

    def healthz(request):
        return text_body("ok")

    def readyz(request):
        ready, checks = manager.readiness()
        lines = ["%s: %s" % (name, "ok (%s)" % text if ok else text) for name, (ok, text) in checks.items()]
        return text_body(("ready" if ready else "not ready") + "\n" + "\n".join(lines),
                         200 if ready else 503)

    def config_dump(request):
        from sidecar.config import config_to_dict
        return json_body({"generation": manager.generation, "source": manager.config_path,
                          "applied_at": manager.applied_at,
                          "config": redact(config_to_dict(manager.cfg))})

    def stats(request):
        return json_body(manager.stats_snapshot())

    def get_logging(request):
        return json_body({"level": manager.log_level})

    def put_logging(request):
        level = (request.query.get("level") or [None])[0]
        if level is None and request.body:
            try:
                level = json.loads(request.body).get("level")
            except (ValueError, AttributeError):
                return text_body("body must be JSON like {\"level\": \"debug\"}", 400)
        if level not in LEVELS:
            return text_body("level must be one of %s" % ", ".join(LEVELS), 400)
        manager.call(manager.set_log_level(level))
        return json_body({"level": level})

    def reload(request):
        result = manager.call(manager.reload(), timeout=60)
        return json_body(result, 200 if result["ok"] else 400)

    def drain(request):
        manager.call(manager.drain())
        return text_body("draining")

    def quit(request):
        manager.call_soon(manager.request_stop)
        return text_body("OK")

    return {
        "/healthz": {"GET": healthz, "HEAD": healthz},
        "/readyz": {"GET": readyz, "HEAD": readyz},
        "/config_dump": {"GET": config_dump},
        "/stats": {"GET": stats},
        "/logging": {"GET": get_logging, "PUT": put_logging, "POST": put_logging},
        "/reload": {"POST": reload},
        "/drain": {"POST": drain},
        "/quitquitquit": {"POST": quit},
    }


def health_routes(manager):
    """The kubelet probe listener: /healthz/ready (Istio's path) and /readyz."""
    def ready(request):
        ok, checks = manager.readiness()
        failing = ["%s: %s" % (name, why) for name, (good, why) in checks.items() if not good]
        return text_body("ready" if ok else "not ready: " + "; ".join(failing), 200 if ok else 503)
    return {"/healthz/ready": {"GET": ready, "HEAD": ready}, "/readyz": {"GET": ready, "HEAD": ready}}
