"""Which destination ports interception leaves alone, in every mode.

The configured `interception.exclude_outbound_ports` / `exclude_inbound_ports`, plus, on
inbound, the sidecar's own listeners, as Istio's istio-iptables does for 15090 (metrics),
15021 (health) and 15020: traffic to them must reach them, not be steered to the inbound
listener (the kubelet's probes and Prometheus' scrapes would loop into the app). The
admin port is on the list too, for a sidecar whose admin API is bound beyond loopback.
Outbound needs nothing extra: connects to loopback are never captured, and the sidecar's
own connections never pass through the app's interception (cgroup or uid).
"""
from sidecar.config.model import Config


def sidecar_ports(cfg: Config) -> set:
    """The ports of the sidecar's own listeners that are not capture listeners."""
    return {cfg.admin.listen[1], cfg.telemetry.metrics_listen[1], cfg.telemetry.health_listen[1]}


def excluded_outbound_ports(cfg: Config) -> list:
    return sorted(set(cfg.interception.exclude_outbound_ports))


def excluded_inbound_ports(cfg: Config) -> list:
    return sorted(set(cfg.interception.exclude_inbound_ports) | sidecar_ports(cfg))
