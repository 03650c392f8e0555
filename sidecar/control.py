"""The control channel between the manager and one worker: a Unix socketpair made at spawn.

Frames are a 4-byte big-endian length and a pickled dict with an "op". Both ends are
the same two processes of one installation, so pickle is safe here (nothing else can
reach an inherited socketpair).

    manager -> worker   {"op": "apply", "generation": G, "config": Config, "labels": {...}}
                        {"op": "log_level", "level": "debug"}
    worker -> manager   {"op": "ready", "generation": G}          listeners bound, serving
                        {"op": "applied", "generation": G, "ok": bool, "error": str,
                         "seconds": float}

A worker takes a new config only through "apply": it validates and compiles it, swaps it
in for new exchanges (Worker.apply_config), and answers "applied". The first "apply" is
sent right after spawn, before the worker has listeners: it answers "ready" instead.
"""
import asyncio
import pickle
import socket
import struct

_HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20


def socketpair():
    """(manager end, worker end): the worker end is inherited by the worker process."""
    manager_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    worker_end.set_inheritable(True)
    return manager_end, worker_end


def encode(message: dict) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


class Channel:
    """One end of a control channel on an asyncio loop: `send(message)`, and `on_message`
    called for every frame received; `on_closed` when the other end goes away."""

    def __init__(self, loop, sock: socket.socket, on_message, on_closed=None):
        self.loop = loop
        self.sock = sock
        self.sock.setblocking(False)
        self.on_message = on_message
        self.on_closed = on_closed
        self.buffer = bytearray()
        self.closed = False
        self._send_lock = asyncio.Lock()    # frames never interleave
        loop.add_reader(sock.fileno(), self._readable)

    async def send(self, message: dict):
        data = encode(message)
        async with self._send_lock:
            if self.closed:
                raise ConnectionError("control channel closed")
            await self.loop.sock_sendall(self.sock, data)

    def _readable(self):
        try:
            data = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            if self.on_closed is not None:
                self.on_closed()
            return
        self.buffer += data
        while len(self.buffer) >= 4:
            (size,) = _HEADER.unpack_from(self.buffer)
            if size > MAX_FRAME:
                self.close()
                return
            if len(self.buffer) < 4 + size:
                break
            body = bytes(self.buffer[4:4 + size])
            del self.buffer[:4 + size]
            self.on_message(pickle.loads(body))

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.loop.remove_reader(self.sock.fileno())
            except (ValueError, OSError):
                pass
            self.sock.close()
