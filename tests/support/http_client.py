"""A raw HTTP/1.1 client on a plain socket: tests send exact bytes and read exact replies."""
import socket


class RawClient:
    def __init__(self, address, timeout=10.0):
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def read_head(self):
        """(status, headers dict lower-cased (last wins), raw head)"""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower().decode()] = v.strip().decode()
        return status, headers, head

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_chunked(self):
        body = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            line, _, self.buf = self.buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while not self.buf.startswith(b"\r\n"):
                    while b"\r\n" not in self.buf:
                        self._fill()
                    if self.buf.startswith(b"\r\n"):
                        break
                    _, _, self.buf = self.buf.partition(b"\r\n")
                self.read_exact(2)
                return body
            body += self.read_exact(size)
            self.read_exact(2)

    def read_response(self, method="GET"):
        """(status, headers, body) of one response, following its framing."""
        while True:
            status, headers, head = self.read_head()
            if status >= 200 or status == 101:
                break
        if method == "HEAD" or status in (204, 304) or status < 200:
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, headers, self.read_chunked()
        if "content-length" in headers:
            return status, headers, self.read_exact(int(headers["content-length"]))
        return status, headers, self.read_until_close()

    def read_until_close(self):
        while True:
            try:
                self._fill()
            except EOFError:
                out, self.buf = self.buf, b""
                return out

    def is_closed(self, timeout=2.0):
        """True when the server closed the connection (EOF or reset) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
