"""In-kernel splice of a byte tunnel: the worker hands both sockets to the tunnel_splice
programs (bpf/tunnel_splice.c) and stops touching the bytes.

Theory of operation (every step is there for a reason found on the real kernel):

    1. Stop reading both sockets, then read each until its receive queue is empty and
       pass that on: the kernel hands the splice program whole skbs, also one the worker
       has read half of (TCP appends arriving bytes to the last queued skb), so the
       hand-off must not happen in the middle of one (the half already read would arrive
       twice). A tunnel too busy to empty its queue is retried a little later. Then wait until both transports have written everything
       the worker still held (bytes after a 101 head, protocol-detection bytes, pipelined
       bytes): those are older than anything the kernel will forward, so they go first.
    2. Note how many bytes each socket has queued for sending so far (acked + unacked):
       from here on only the kernel adds to it.
    3. Write one sc_splice_ends entry per socket (the other's cookie), then put both
       sockets into sc_splice_socks (socket fd as the value). A socket that receives bytes
       between the two inserts finds no peer: the program keeps both directions in
       userspace for good (its bytes stay with its socket), so the two ways of forwarding
       never mix, and the worker reads the sockets as before.
    4. Kick both sockets (SO_RCVLOWAT): bytes that arrived while the worker was not
       reading sit in the receive queue, and the kernel runs the program only when more
       arrive; the kick runs it now, oldest bytes first.
    5. Watch both sockets for EOF and errors only (EPOLLRDHUP, edge-triggered, in an epoll
       set of the splicer's own, itself watched by the event loop): incoming bytes wake
       nobody. An EOF is passed on (shutdown of the peer's write side) once the kernel has
       forwarded every byte before it: the source has nothing left unread and the peer's
       send queue has grown by exactly what the program counted. An error closes both.
    6. When both ends are closed: fold the byte counts into the worker's tcp byte
       counters (also every second while the tunnel lives) and delete the entries. The
       sockets leave sc_splice_socks as they close.

Where splicing is not possible (the programs are not loaded, a map is full, a socket is an
accelerated local hop, whose bytes arrive outside the path the splice program sees), the
tunnel stays in userspace, unchanged. No bcc here: sidecar.bpf.syscall only.
"""
import errno
import fcntl
import logging
import os
import select
import socket
import struct
import termios
import time

from fastpath.tunnel import PATH_KERNEL, PATH_USERSPACE
from sidecar.bpf import syscall
from sidecar.bpf.layout import SPLICE_END, SPLICE_FRESH, SPLICE_USER, pack_hop_key

log = logging.getLogger("sidecar.splice")

SO_COOKIE = 57                   # include/uapi/asm-generic/socket.h
TCP_INFO_SIZE = 232
TCPI_BYTES_ACKED = 120           # struct tcp_info: __u64 tcpi_bytes_acked
RETRY_MAPS_AFTER = 2.0           # seconds before looking for the maps again
FLUSH_WAIT = 2.0                 # at most this long for the worker's own bytes to go out
DRAIN_STALL = 30.0               # an EOF whose bytes make no progress this long: give up
FOLD_INTERVAL = 1.0              # seconds between byte-count folds of live tunnels
READ_CHUNK = 1 << 20
READ_LIMIT = 8 << 20             # bytes read before the hand-off, at most, per try
HAND_OFF_ATTEMPTS = 4
HAND_OFF_RETRY = 0.05            # seconds between tries
_U64 = struct.Struct("=Q")
_INT = struct.Struct("i")
WATCH = select.EPOLLRDHUP | select.EPOLLET


def socket_cookie(sock) -> int:
    return _U64.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


def _ioctl_int(fd, request) -> int:
    return _INT.unpack(fcntl.ioctl(fd, request, b"\0\0\0\0"))[0]


def unread_bytes(fd) -> int:
    """Bytes received and not yet consumed (SIOCINQ)."""
    return _ioctl_int(fd, termios.FIONREAD)


def queued_bytes(sock) -> int:
    """Bytes ever queued for sending on `sock`: acknowledged + still in the send queue
    (TCP_INFO bytes_acked + SIOCOUTQ; the handshake's SYN may count one, a constant)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    return _U64.unpack_from(info, TCPI_BYTES_ACKED)[0] + _ioctl_int(sock.fileno(), termios.TIOCOUTQ)


class Splicer:
    """A worker's handle on the splice maps of its instance: hands tunnels to the kernel,
    watches them, counts them. Opens the pinned maps lazily (the loader pins them while
    the workers start) and lets tunnels stay in userspace while they are not there."""

    def __init__(self, loop, maps_path):
        self.loop = loop
        self.maps_path = maps_path
        self.socks = self.ends = self.hops = None
        self.tried = 0.0
        self.epoll = None
        self.watched = {}            # fd -> (SplicedTunnel, end index)
        self.live = set()
        self.fold_handle = None

    # -- maps ---------------------------------------------------------------------------

    def available(self) -> bool:
        if self.socks is not None:
            return True
        now = time.monotonic()
        if now - self.tried < RETRY_MAPS_AFTER:
            return False
        self.tried = now
        try:
            socks = syscall.obj_get(os.path.join(self.maps_path, "sc_splice_socks"))
        except OSError:
            return False
        try:
            ends = syscall.obj_get(os.path.join(self.maps_path, "sc_splice_ends"))
        except OSError:
            os.close(socks)
            return False
        try:
            self.hops = syscall.obj_get(os.path.join(self.maps_path, "sc_hop_socks"))
        except OSError:
            self.hops = None         # no local-hop acceleration in this instance
        self.socks, self.ends = socks, ends
        self.epoll = select.epoll()
        self.loop.add_reader(self.epoll.fileno(), self._events)
        self.fold_handle = self.loop.call_later(FOLD_INTERVAL, self._fold_live)
        log.info("splicing tunnels in the kernel (%s)", self.maps_path)
        return True

    def close(self):
        if self.fold_handle is not None:
            self.fold_handle.cancel()
        if self.epoll is not None:
            self.loop.remove_reader(self.epoll.fileno())
            self.epoll.close()
        for fd in (self.socks, self.ends, self.hops):
            if fd is not None:
                os.close(fd)
        self.socks = self.ends = self.hops = self.epoll = None

    def is_local_hop(self, sock) -> bool:
        """True when `sock` is an accelerated local hop (bpf/local_hops.c): its peer's
        bytes reach it outside TCP, where the splice program would never see them."""
        if self.hops is None:
            return False
        try:
            key = pack_hop_key(sock.getsockname()[:2], sock.getpeername()[:2])
        except OSError:
            return False
        return syscall.map_lookup(self.hops, key, 8) is not None

    def end_entry(self, cookie):
        raw = syscall.map_lookup(self.ends, _U64.pack(cookie), SPLICE_END.size)
        return SPLICE_END.unpack(raw) if raw is not None else None

    # -- hand-off -----------------------------------------------------------------------

    def hand_off(self, tunnel):
        """Splices `tunnel` (a fastpath.tunnel.Tunnel whose two ends are connected) if the
        kernel can; otherwise leaves it as it is."""
        if not self.available():
            tunnel.record_path(PATH_USERSPACE)
            return
        socks = [end.transport.get_extra_info("socket") for end in (tunnel.down, tunnel.up)]
        if any(s is None for s in socks) or tunnel.down.eof or tunnel.up.eof:
            tunnel.record_path(PATH_USERSPACE)
            return
        if any(self.is_local_hop(s) for s in socks):
            tunnel.record_path(PATH_USERSPACE)
            return
        SplicedTunnel(self, tunnel, socks).begin()

    # -- the watcher ----------------------------------------------------------------------

    def watch(self, fd, spliced, index):
        try:
            self.epoll.register(fd, WATCH)
        except FileExistsError:      # an earlier tunnel's registration of this fd number
            self.epoll.modify(fd, WATCH)
        self.watched[fd] = (spliced, index)

    def unwatch(self, fd, spliced):
        if self.watched.get(fd, (None,))[0] is spliced:
            del self.watched[fd]
            try:
                self.epoll.unregister(fd)
            except OSError:          # already closed: the kernel dropped it from the set
                pass

    def _events(self):
        for fd, events in self.epoll.poll(0):
            entry = self.watched.get(fd)
            if entry is not None:
                entry[0].event(entry[1], events)

    def _fold_live(self):
        for spliced in list(self.live):
            spliced.fold()
        self.fold_handle = self.loop.call_later(FOLD_INTERVAL, self._fold_live)


class SplicedTunnel:
    """One tunnel while the kernel forwards it (see the module's steps)."""

    def __init__(self, splicer, tunnel, socks):
        self.splicer = splicer
        self.tunnel = tunnel
        self.ends = (tunnel.down, tunnel.up)
        self.socks = socks
        self.fds = [s.fileno() for s in socks]
        self.cookies = [None, None]
        self.base = [0, 0]           # bytes queued on each socket at the hand-off
        self.folded = [0, 0]         # kernel-forwarded bytes already counted, by source end
        self.inserted = False
        self.kernel = [False, False]   # by source end: the kernel forwards what it receives
        self.draining = [None, None]   # by source end: (deadline, last progress) after its EOF
        self.started = time.monotonic()

    # -- 1. stop reading, let the worker's own bytes out -------------------------------------

    def begin(self):
        for end in self.ends:
            end.kernel = True
            end.transport.pause_reading()
        for index in (0, 1):
            try:
                at_boundary = self._read_to_boundary(index)
            except OSError as e:
                self._stay_in_userspace("cannot read before the hand-off: %s" % e.strerror)
                return
            if not at_boundary:
                self._try_later()
                return
        self._when_flushed()

    def _read_to_boundary(self, index) -> bool:
        """Reads socket `index` until a read leaves its receive queue empty (it returns
        less than asked for, EAGAIN, or EOF), passing the bytes on as the worker would; True
        then. False if a fast sender kept it full for READ_LIMIT bytes: not now.

        Why: TCP appends new bytes to the last queued skb, so where the worker stopped
        reading is not an skb boundary; only an empty queue is."""
        end, fd = self.ends[index], self.fds[index]
        total = 0
        while total < READ_LIMIT:
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return True
            if data:
                end.data_received(data)
            if len(data) < READ_CHUNK:
                return True
            total += len(data)
        return False

    def _try_later(self):
        """The tunnel is too busy to stop at an skb boundary now: copy in userspace a while
        and try again (a few times)."""
        log.debug("tcp tunnel %s: too busy to hand off, trying again", self.fds)
        for end in self.ends:
            end.kernel = False
            if not end.closed:
                end.transport.resume_reading()
        self.tunnel.splice_attempts += 1
        if self.tunnel.splice_attempts >= HAND_OFF_ATTEMPTS:
            self._stay_in_userspace("no skb boundary after %d tries" % HAND_OFF_ATTEMPTS)
            return
        self.splicer.loop.call_later(HAND_OFF_RETRY, self.tunnel.start_splice_now)

    def _when_flushed(self):
        if any(end.closed for end in self.ends):
            return
        if any(end.transport.get_write_buffer_size() for end in self.ends):
            if time.monotonic() - self.started > FLUSH_WAIT:
                self._stay_in_userspace("the tunnel's own bytes did not drain")
                return
            self.splicer.loop.call_later(0.001, self._when_flushed)
            return
        try:
            self._insert()
        except OSError as e:
            self._stay_in_userspace("kernel splice refused: %s" % (e.strerror or e))

    def _stay_in_userspace(self, why):
        log.debug("tcp tunnel stays in userspace: %s", why)
        self.tunnel.record_path(PATH_USERSPACE)
        for end in self.ends:
            end.kernel = False
            if not end.closed:
                end.transport.resume_reading()

    # -- 2-4. baselines, maps, kick -------------------------------------------------------

    def _insert(self):
        sp = self.splicer
        down, up = self.socks
        self.cookies = [socket_cookie(down), socket_cookie(up)]
        self.base = [queued_bytes(down), queued_bytes(up)]
        keys = [_U64.pack(c) for c in self.cookies]
        syscall.map_update(sp.ends, keys[0], SPLICE_END.pack(self.cookies[1], 0, SPLICE_FRESH, 0))
        try:
            syscall.map_update(sp.ends, keys[1], SPLICE_END.pack(self.cookies[0], 0, SPLICE_FRESH, 0))
        except OSError:
            syscall.map_delete(sp.ends, keys[0])
            raise
        try:
            syscall.map_update(sp.socks, keys[0], _U64.pack(self.fds[0]))
        except OSError:
            syscall.map_delete(sp.ends, keys[0])
            syscall.map_delete(sp.ends, keys[1])
            raise
        self.inserted = True
        sp.live.add(self)
        self.tunnel.splice = self
        try:
            syscall.map_update(sp.socks, keys[1], _U64.pack(self.fds[1]))
        except OSError as e:
            # The downstream socket is in the map: its bytes now reach userspace through
            # it (passed by the program), so both directions stay in userspace.
            syscall.map_update(sp.ends, keys[0], SPLICE_END.pack(self.cookies[1], 0, SPLICE_USER, 0))
            self._stay_in_userspace("kernel splice refused the upstream socket: %s" % e.strerror)
            return
        for s in self.socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            except OSError:
                pass                 # a socket that broke meanwhile: the watcher reports it
        entries = [sp.end_entry(c) for c in self.cookies]
        if any(e is not None and e[2] == SPLICE_USER for e in entries):
            # Bytes arrived between the two inserts: both directions stay in userspace
            # (the program makes the other one follow), reading the sockets as before.
            for index in (0, 1):
                syscall.map_update(sp.ends, keys[index], SPLICE_END.pack(
                    self.cookies[index ^ 1], 0, SPLICE_USER, 0))
            self._stay_in_userspace("bytes arrived during the hand-off")
            return
        self.kernel = [True, True]
        for index in (0, 1):
            sp.watch(self.fds[index], self, index)
        log.debug("tcp tunnel %s: spliced", self.fds)
        self.tunnel.record_path(PATH_KERNEL)

    # -- 5. EOF and errors ------------------------------------------------------------------

    def event(self, index, events):
        end = self.ends[index]
        if end.closed:
            return
        if events & select.EPOLLERR:
            err = self.socks[index].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self._failed(index, err)
        elif events & (select.EPOLLRDHUP | select.EPOLLHUP):
            if self.draining[index] is None and not end.eof:
                self.draining[index] = (time.monotonic() + DRAIN_STALL, -1)
                self._drain(index)

    def _failed(self, index, err):
        log.debug("tcp tunnel: %s side failed: %s", ("downstream", "upstream")[index],
                  os.strerror(err) if err else "hang-up")
        self.fold()
        self._unwatch()
        self.ends[index].abort()
        peer = self.ends[index ^ 1]
        if not peer.closed:
            peer.shut()

    def _drain(self, index):
        """Passes the EOF received on end `index` on once the kernel forwarded all before it."""
        end = self.ends[index]
        peer_index = index ^ 1
        if end.closed or self.ends[peer_index].closed:
            return
        entry = self.splicer.end_entry(self.cookies[index])
        forwarded = entry[1] if entry is not None else 0
        try:
            unread = unread_bytes(self.fds[index])
            queued = queued_bytes(self.socks[peer_index]) - self.base[peer_index]
        except OSError as e:
            self._failed(index, e.errno)
            return
        if unread == 0 and queued >= forwarded:
            self.draining[index] = None
            end.finished()
            return
        deadline, last = self.draining[index]
        now = time.monotonic()
        if queued != last:
            deadline = now + DRAIN_STALL
        elif now > deadline:
            log.warning("tcp tunnel: %d bytes before an EOF were not passed on in %.0fs; closing",
                        forwarded - queued, DRAIN_STALL)
            self._failed(index, errno.ETIMEDOUT)
            return
        self.draining[index] = (deadline, queued)
        self.splicer.loop.call_later(0.001, self._drain, index)

    def _unwatch(self):
        for fd in self.fds:
            self.splicer.unwatch(fd, self)

    # -- 6. counts and teardown ----------------------------------------------------------------

    def fold(self):
        """Adds the bytes the kernel forwarded since the last fold to the tunnel's counts."""
        if not self.inserted:
            return
        for index in (0, 1):
            entry = self.splicer.end_entry(self.cookies[index])
            if entry is not None and entry[1] > self.folded[index]:
                self.tunnel.add_bytes(index, entry[1] - self.folded[index])
                self.folded[index] = entry[1]

    def ended(self):
        """Both ends are closed (Tunnel.ended): final counts, entries deleted."""
        sp = self.splicer
        self._unwatch()
        sp.live.discard(self)
        if sp.ends is None:
            return
        self.fold()
        for cookie in self.cookies:
            if cookie is not None:
                syscall.map_delete(sp.ends, _U64.pack(cookie))
