"""What crosses the pod link: a small AF_PACKET capture on one veth end, for proofs such as
"the bytes between the pods are TLS". Runs in a thread whose socket belongs to the pod's
namespace; captures only while the `with` block runs, keeps the first bytes of each TCP
payload sent to one port (never whole streams).
"""
import socket
import struct
import threading

__all__ = ["PortCapture", "looks_like_tls", "looks_like_http"]

ETH_P_IP = 0x0800
ETH_HEADER = 14


def looks_like_tls(payload):
    """A TLS record header: handshake (22) or application data (23), version 3.x."""
    return len(payload) >= 3 and payload[0] in (22, 23) and payload[1] == 3


def looks_like_http(payload):
    return payload[:4] in (b"GET ", b"POST", b"PUT ", b"HEAD") or payload[:5] == b"HTTP/"


class PortCapture:
    """Captures TCP payloads to `port` arriving on `dev` inside `pod` (a topology.Pod).
    `.payloads`: the first 16 bytes of each captured segment with data."""

    def __init__(self, pod, dev, port, limit=200):
        self.pod, self.dev, self.port, self.limit = pod, dev, port, limit
        self.payloads = []
        self.sock = None
        self.thread = None
        self.stopping = False

    def _open(self):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        s.bind((self.dev, 0))
        s.settimeout(0.1)
        return s

    def __enter__(self):
        self.sock = self.pod.call(self._open)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping = True
        self.thread.join(2)
        self.sock.close()

    def _loop(self):
        while not self.stopping and len(self.payloads) < self.limit:
            try:
                frame = self.sock.recv(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            payload = _tcp_payload_to(frame[ETH_HEADER:], self.port)
            if payload:
                self.payloads.append(payload[:16])


def _tcp_payload_to(packet, port):
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_TCP:
        return b""
    ihl = (packet[0] & 0x0F) * 4
    total = struct.unpack("!H", packet[2:4])[0]
    tcp = packet[ihl:total]
    if len(tcp) < 20 or struct.unpack("!H", tcp[2:4])[0] != port:
        return b""
    offset = (tcp[12] >> 4) * 4
    return tcp[offset:]
