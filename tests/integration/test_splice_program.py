"""bpf/tunnel_splice.c on its own, loaded by the real loader (a plan with only the splice
family: no cgroup, no interface), driven with raw sockets on a namespace's loopback: the
kernel behaviours fastpath/splice.py is built on.

    - spliced sockets forward both ways in the kernel and count the bytes;
    - a FIN is not forwarded (the peer's send queue would count an empty skb as an
      error): the other direction keeps working, with no error on either socket;
    - a socket that receives bytes before its peer is in the map keeps them (readable in
      userspace, in order), and the tunnel's other direction follows it into userspace;
    - bytes that were queued before the hand-off move only once the socket is kicked
      (SO_RCVLOWAT), and then first.
"""
import contextlib
import json
import os
import socket
import struct
import sys
import time

import pytest

from sidecar.bpf import EXIT_OK, syscall
from sidecar.bpf.cleanup import remove_instance
from sidecar.bpf.layout import SPLICE_END, SPLICE_FRESH, SPLICE_KERNEL, SPLICE_USER
from sidecar.bpf.programs import Plan
from sidecar.bpf.state import instance_dir, maps_dir
from fastpath.splice import socket_cookie
from tests.conftest import require_privileges
from tests.support.netns import ROOT, Netns

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]

_U64 = struct.Struct("=Q")


@pytest.fixture(scope="module")
def splice():
    require_privileges(root=True, netns=True, tools=("ip", "nsenter"))
    with Netns() as ns:
        name = "t-splice-%s" % ns.name[5:]
        plan = Plan(instance=name, app_cgroup=None, interface=None, outbound=("127.0.0.1", 15001),
                    inbound_port=15006, fail_open=True, interception="iptables", splice=True)
        r = ns.run([sys.executable, "-m", "sidecar.bpf.loader", "--plan", plan.to_json(),
                    "--owner-pid", str(os.getpid())], cwd=ROOT, check=False, timeout=60)
        assert r.returncode == EXIT_OK, r.stderr
        report = json.loads(r.stdout.strip().splitlines()[-1])
        assert [l["function"] for l in report["links"]] == ["sc_splice_verdict"]
        path = maps_dir(instance_dir(name))
        fds = {m: syscall.obj_get(os.path.join(path, m)) for m in ("sc_splice_socks", "sc_splice_ends")}
        try:
            yield {"ns": ns, **fds}
        finally:
            for fd in fds.values():
                os.close(fd)
            remove_instance(instance_dir(name))


@contextlib.contextmanager
def tunnel(ns):
    """client <-> D (a proxy's accepted socket), U (the proxy's upstream) <-> server."""
    def make():
        srv = socket.create_server(("127.0.0.1", 0))
        prx = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(prx.getsockname())
        down, _ = prx.accept()
        up = socket.create_connection(srv.getsockname())
        server, _ = srv.accept()
        srv.close()
        prx.close()
        return client, down, up, server
    socks = ns.call(make)
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def end(sp, sock):
    raw = syscall.map_lookup(sp["sc_splice_ends"], _U64.pack(socket_cookie(sock)), SPLICE_END.size)
    return SPLICE_END.unpack(raw)


def add_ends(sp, down, up):
    for a, b in ((down, up), (up, down)):
        syscall.map_update(sp["sc_splice_ends"], _U64.pack(socket_cookie(a)),
                           SPLICE_END.pack(socket_cookie(b), 0, SPLICE_FRESH, 0))


def add_sock(sp, sock):
    syscall.map_update(sp["sc_splice_socks"], _U64.pack(socket_cookie(sock)), _U64.pack(sock.fileno()))


def recv_exactly(sock, n, timeout=5.0):
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def test_spliced_sockets_forward_both_ways_and_count(splice):
    with tunnel(splice["ns"]) as (client, down, up, server):
        add_ends(splice, down, up)
        add_sock(splice, down)
        add_sock(splice, up)
        a, b = os.urandom(300000), os.urandom(200000)
        client.sendall(a)
        server.sendall(b)
        assert recv_exactly(server, len(a)) == a
        assert recv_exactly(client, len(b)) == b
        assert end(splice, down)[1:3] == (len(a), SPLICE_KERNEL)
        assert end(splice, up)[1:3] == (len(b), SPLICE_KERNEL)


def test_a_fin_is_not_forwarded_and_the_other_direction_keeps_working(splice):
    with tunnel(splice["ns"]) as (client, down, up, server):
        add_ends(splice, down, up)
        add_sock(splice, down)
        add_sock(splice, up)
        client.sendall(b"x" * 1000)
        assert recv_exactly(server, 1000) == b"x" * 1000
        client.shutdown(socket.SHUT_WR)
        time.sleep(0.1)
        # The proxy sees the EOF on its socket; nothing reached the server's side yet.
        down.setblocking(False)
        assert down.recv(10) == b""
        assert up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        server.sendall(b"y" * 5000)
        assert recv_exactly(client, 5000) == b"y" * 5000
        assert up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        assert down.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def test_bytes_before_the_peer_is_in_the_map_keep_the_tunnel_in_userspace(splice):
    with tunnel(splice["ns"]) as (client, down, up, server):
        add_ends(splice, down, up)
        add_sock(splice, down)                 # the upstream socket is not in the map yet
        first = os.urandom(50000)
        client.sendall(first)
        time.sleep(0.1)
        assert end(splice, down)[2] == SPLICE_USER
        add_sock(splice, up)
        later = os.urandom(70000)
        client.sendall(later)
        server.sendall(b"reply")
        time.sleep(0.1)
        # Both directions stayed with their sockets, readable by userspace in order.
        assert end(splice, up)[2] == SPLICE_USER
        assert recv_exactly(down, len(first) + len(later)) == first + later
        assert recv_exactly(up, 5) == b"reply"
        assert end(splice, down)[1] == end(splice, up)[1] == 0


def test_bytes_queued_before_the_hand_off_move_once_kicked_and_first(splice):
    with tunnel(splice["ns"]) as (client, down, up, server):
        queued = os.urandom(40000)
        client.sendall(queued)
        time.sleep(0.1)
        add_ends(splice, down, up)
        add_sock(splice, down)
        add_sock(splice, up)
        server.settimeout(0.3)
        with pytest.raises(socket.timeout):
            server.recv(1)                      # not without a kick ...
        down.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        later = os.urandom(10000)
        client.sendall(later)
        assert recv_exactly(server, len(queued) + len(later)) == queued + later   # ... then first
