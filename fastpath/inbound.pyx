# cython: language_level=3
"""The inbound pipeline: accept -> (opaque TCP port? tunnel) -> HTTP/1.1 -> the app.

Connections arrive on the inbound listener (0.0.0.0:15006), redirected there by the kernel
layer or connected directly. Their original destination port decides: a port in
`inbound.tcp_passthrough_ports` is tunnelled as opaque bytes to the app host on that port;
everything else is HTTP/1.1, proxied to `inbound.app`.
"""
from fastpath.downstream cimport HttpDownstream, ListenerContext
from fastpath.original_destination import original_destination
from fastpath.tunnel import start_tunnel


cdef class InboundAccept:
    """First protocol of an inbound connection when some ports are opaque TCP."""
    cdef ListenerContext ctx
    cdef frozenset passthrough_ports
    cdef str app_host

    def __cinit__(self, ListenerContext ctx, frozenset passthrough_ports, str app_host):
        self.ctx = ctx
        self.passthrough_ports = passthrough_ports
        self.app_host = app_host

    def connection_made(self, transport):
        cdef HttpDownstream http
        sock = transport.get_extra_info("socket")
        # Redirected by iptables: SO_ORIGINAL_DST; steered by eBPF (sk_assign): the
        # accepted socket's own address is the original destination.
        dst = original_destination(sock) or transport.get_extra_info("sockname")
        if dst is not None and dst[1] in self.passthrough_ports:
            start_tunnel(self.ctx.loop, transport, self.app_host, dst[1], None, 5.0,
                         self.ctx.worker_stats, self.ctx.direction_index)
            return
        http = HttpDownstream(self.ctx)
        http.original_dst = dst
        transport.set_protocol(http)
        http.connection_made(transport)

    def connection_lost(self, exc):
        pass


def inbound_protocol_factory(ListenerContext ctx, passthrough_ports, str app_host):
    """The protocol factory for the inbound listener."""
    ports = frozenset(passthrough_ports or ())
    if not ports:
        return lambda: HttpDownstream(ctx)
    return lambda: InboundAccept(ctx, ports, app_host)
