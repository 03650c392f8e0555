"""fastpath.original_destination on real sockets, under both kinds of interception the
sidecar installs: iptables REDIRECT (conntrack answers SO_ORIGINAL_DST) and eBPF (the
cgroup getsockopt program answers it from the map the connect and sockops programs fill).

No sidecar here: the kernel part alone. A probe process in the sidecar's cgroup listens
where the outbound listener would (127.0.0.1:15001 and [::1]:15001) and reports what
`original_destination()` says of each connection it accepts; the app's connections come
from the app's cgroup. The same probe makes large getsockopt calls, which the eBPF
getsockopt program (it sees every getsockopt of the sidecar's cgroup) must leave intact.
"""
import json
import os
import subprocess
import sys

import pytest

from sidecar.bpf.cleanup import cleanup_instance
from sidecar.bpf.programs import Plan
from sidecar.interception.iptables_rules import IptablesRules, RulePlan
from tests.conftest import require_privileges
from tests.support.cgroups import Cgroup
from tests.support.netns import APP_PYTHON, ROOT, Netns, as_app, veth_pair

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]

CLIENT_V4, SERVER_V4 = "10.200.0.1", "10.200.0.2"
CLIENT_V6, SERVER_V6 = "fd00:200::1", "fd00:200::2"

PROBE = r"""
import ctypes, json, os, socket, struct, sys
from fastpath.original_destination import original_destination

SO_PEERGROUPS = 59
libc = ctypes.CDLL(None, use_errno=True)

def big_getsockopt(sock, level, name, size):
    # Python's socket.getsockopt caps the buffer at 1024 bytes; these calls want more
    # than a page, the size past which a getsockopt program sees only part of it.
    buf = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    if libc.getsockopt(sock.fileno(), level, name, buf, ctypes.byref(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.raw[:length.value]
listeners = {}
for v, family, host in ((4, socket.AF_INET, "127.0.0.1"), (6, socket.AF_INET6, "::1")):
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 15001))
    s.listen(16)
    s.settimeout(10)
    listeners[v] = s

def accept(v):
    conn, peer = listeners[v].accept()
    with conn:
        info = big_getsockopt(conn, socket.IPPROTO_TCP, socket.TCP_INFO, 8192)
        return {"peer": list(peer[:2]), "orig": original_destination(conn),
                "tcp_info_len": len(info), "tcp_state": info[0]}

print("ready", flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "accept":
        out = accept(int(arg))
    elif cmd == "direct":
        v = int(arg)
        host = "127.0.0.1" if v == 4 else "::1"
        c = socket.create_connection((host, 15001), timeout=5)
        out = accept(v)
        c.close()
    elif cmd == "peergroups":
        # A getsockopt answer longer than a page: the getsockopt program sees one page of
        # it and must let the kernel's full answer through.
        groups = list(range(100000, 100000 + int(arg)))
        os.setgroups(groups)
        a, b = socket.socketpair()
        raw = big_getsockopt(a, socket.SOL_SOCKET, SO_PEERGROUPS, 4 * len(groups) + 4096)
        got = list(struct.unpack("=%dI" % (len(raw) // 4), raw))
        out = {"bytes": len(raw), "match": got == groups}
    else:
        out = {"error": "unknown command " + cmd}
    print(json.dumps(out), flush=True)
"""

HOLD_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(s.getsockname()[1], flush=True)
s.recv(1)
"""


class Probe:
    def __init__(self, ns, cgroup):
        self.proc = ns.popen([sys.executable, "-c", PROBE], cgroup=cgroup, cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", line

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(5)


def _install_iptables(client, app_cg):
    rules = IptablesRules(RulePlan(instance="t-od-%s" % app_cg.name[5:], outbound_port=15001,
                                   inbound_port=15006, app_cgroup=app_cg.relative))
    client.call(rules.install)
    return lambda: client.call(rules.remove)


def _install_ebpf(client, app_cg, sidecar_cg):
    instance = "t-od-%s" % app_cg.name[5:]
    plan = Plan(instance=instance, app_cgroup=app_cg.path, interface=None,
                outbound=("127.0.0.1", 15001), inbound_port=15006, fail_open=False)
    r = client.run([sys.executable, "-m", "sidecar.bpf.loader", "--plan", plan.to_json(),
                    "--owner-pid", str(os.getpid())], cgroup=sidecar_cg, cwd=ROOT, check=False,
                   timeout=60)
    assert r.returncode == 0, r.stderr
    return lambda: cleanup_instance(instance, owner_pid=os.getpid())


@pytest.fixture(scope="module", params=["iptables", "ebpf"])
def pod(request):
    require_privileges(root=True, netns=True, tools=("ip", "nsenter", "setpriv", "iptables"))
    with Netns() as client, Netns() as server, Cgroup() as app_cg, Cgroup() as sidecar_cg:
        veth_pair(client, server, ["%s/24" % CLIENT_V4, "%s/64" % CLIENT_V6],
                  ["%s/24" % SERVER_V4, "%s/64" % SERVER_V6])
        if request.param == "iptables":
            remove = _install_iptables(client, app_cg)
        else:
            remove = _install_ebpf(client, app_cg, sidecar_cg)
        try:
            probe = Probe(client, sidecar_cg)
            try:
                yield {"client": client, "app": app_cg, "probe": probe, "mode": request.param}
            finally:
                probe.close()
        finally:
            remove()


def _app_connects(pod, host, port):
    """An app connection (from the app's cgroup, as the app's user) held open; its local port."""
    app = pod["client"].popen(as_app([APP_PYTHON, "-I", "-c", HOLD_CLIENT, host, str(port)]),
                              cgroup=pod["app"], stdout=subprocess.PIPE, cwd="/")
    return app


@pytest.mark.parametrize("version,host", [(4, SERVER_V4), (6, SERVER_V6)], ids=["ipv4", "ipv6"])
def test_redirected_connection_has_its_original_destination(pod, version, host):
    app = _app_connects(pod, host, 7777)
    try:
        got = pod["probe"].ask("accept %d" % version)
        local_port = int(app.stdout.readline())
    finally:
        app.kill()
        app.wait()
    assert got["orig"] == [host, 7777]
    assert got["peer"][1] == local_port        # the app's own socket, redirected
    assert got["tcp_state"] == 1 and got["tcp_info_len"] > 100   # TCP_INFO answered whole


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_direct_connection_has_no_original_destination(pod, version):
    """The sidecar's own connection to its listener is neither redirected nor answered."""
    got = pod["probe"].ask("direct %d" % version)
    assert got["orig"] is None


def test_getsockopt_answers_longer_than_a_page_pass_through(pod):
    got = pod["probe"].ask("peergroups 3000")
    assert got == {"bytes": 12000, "match": True}
