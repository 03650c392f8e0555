"""Stable ids for route and service names: the label values the workers count under.

A worker counts an exchange in shared memory under small integer ids, not strings. The
manager assigns an id to every route and service name it has ever configured and never
gives it to another name, so a counter keeps its meaning across reloads, and label values
stay bounded by the names in config (at most LABEL_ID_LIMIT - 1 of each; later names share
the "_other" label). Id 0 is "no route" / "no configured service".
"""
from fastpath.stats import LABEL_ID_LIMIT, OTHER

NO_ROUTE = "_none"
NO_SERVICE = {"inbound": "_app", "outbound": "_passthrough"}
OTHER_LABEL = "_other"


class LabelIds:
    """name -> id for routes and for services; ids are never reused."""

    def __init__(self):
        self.routes = {}
        self.services = {}

    def _assign(self, table, names):
        for name in names:
            if name not in table:
                table[name] = len(table) + 1 if len(table) + 1 < LABEL_ID_LIMIT else OTHER

    def assign(self, cfg) -> dict:
        """Ids for every name of `cfg` (new names get new ids): what a worker needs."""
        self._assign(self.routes, [r.name for r in cfg.routes])
        self._assign(self.services, [s.name for s in cfg.services])
        return {"routes": dict(self.routes), "services": dict(self.services)}

    def route_names(self):
        """id -> label value, for the collector."""
        names = {0: NO_ROUTE, OTHER: OTHER_LABEL}
        names.update((i, n) for n, i in self.routes.items() if i != OTHER)
        return names

    def service_names(self):
        names = {OTHER: OTHER_LABEL}
        names.update((i, n) for n, i in self.services.items() if i != OTHER)
        return names
