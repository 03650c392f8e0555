"""Parsing and formatting of the config file's unit-bearing values.

Each `parse_*` takes the YAML value (a str, or an int/float where a bare number is
allowed) and returns the parsed value, or raises `ValueError` whose message is the
user-facing reason. Each `format_*` is the inverse, chosen so that
`parse_x(format_x(v)) == v` exactly: the defaults dump and `/config_dump` rely on it.

Units:
  durations    250ms, 5s, 1.5s, 1m, 1h                 -> float seconds
  sizes        64KiB, 10MB, 1GiB, 512B, or an int      -> int bytes (KB decimal, KiB binary)
  rates        100/s, 6000/m, 10/h                     -> float per second
  percentages  20%, 0.5%, or a bare number of percent  -> fraction 0..1 (Envoy's Percent)
  addresses    host:port, [::1]:port                   -> (host, port)
"""
from __future__ import annotations

import ipaddress
import re

__all__ = [
    "parse_duration", "format_duration", "parse_size", "format_size",
    "parse_rate", "format_rate", "parse_percent", "format_percent",
    "parse_port", "parse_address", "format_address", "parse_host", "parse_cidr", "split_host_port",
    "DURATION_PATTERN", "SIZE_PATTERN", "RATE_PATTERN", "PERCENT_PATTERN", "ADDRESS_PATTERN",
]

_NUMBER = r"(?:\d+(?:\.\d+)?)"

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}

# Also used verbatim as JSON Schema patterns, so they stay in the common regex subset.
DURATION_PATTERN = rf"^({_NUMBER})(ms|s|m|h)$"
SIZE_PATTERN = rf"^({_NUMBER}) ?(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$"
RATE_PATTERN = rf"^({_NUMBER})/(s|m|h)$"
PERCENT_PATTERN = rf"^({_NUMBER})%$"
ADDRESS_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$"

_DURATION_RE = re.compile(DURATION_PATTERN)
_SIZE_RE = re.compile(SIZE_PATTERN)
_RATE_RE = re.compile(RATE_PATTERN)
_PERCENT_RE = re.compile(PERCENT_PATTERN)
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shortest_exact(value, candidates, parse) -> str:
    """The first candidate text that parses back to exactly `value`."""
    for text in candidates:
        try:
            if parse(text) == value:
                return text
        except ValueError:
            continue
    raise ValueError(f"cannot format {value!r} exactly")


def _number_texts(n: float) -> list[str]:
    # '%g' gives the short human form; repr is exact when '%g' rounded too much.
    return [f"{n:g}", repr(float(n))]


# --- durations -------------------------------------------------------------------------

def parse_duration(value) -> float:
    """`250ms`, `5s`, `1.5s`, `1m`, `1h` -> float seconds."""
    if not isinstance(value, str):
        raise ValueError("expected a duration with a unit, e.g. 250ms, 5s, 1m, 1h")
    m = _DURATION_RE.match(value.strip())
    if m is None:
        raise ValueError(f"invalid duration '{value}': expected e.g. 250ms, 5s, 1.5s, 1m, 1h")
    number, unit = m.groups()
    # Divide for milliseconds so that 100ms is exactly the float 0.1.
    if unit == "ms":
        return float(number) / 1000.0
    return float(number) * _DURATION_UNITS[unit]


def format_duration(seconds: float) -> str:
    """The inverse of `parse_duration`: 0.1 -> '100ms', 60.0 -> '1m', 5.0 -> '5s'."""
    candidates = []
    for unit, scale in (("h", 3600.0), ("m", 60.0)):
        if seconds >= scale and float(seconds / scale).is_integer():
            candidates.append(f"{int(seconds // scale)}{unit}")
    if 0 < seconds < 1:
        candidates += [t + "ms" for t in _number_texts(seconds * 1000.0)]
    candidates += [t + "s" for t in _number_texts(seconds)]
    return _shortest_exact(seconds, candidates, parse_duration)


# --- sizes -----------------------------------------------------------------------------

def parse_size(value) -> int:
    """`64KiB`, `10MB`, `1GiB`, `512B` or a plain int (bytes) -> int bytes."""
    if _is_number(value):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"invalid size {value}: not a whole number of bytes")
        if value < 0:
            raise ValueError(f"invalid size {value}: must not be negative")
        return int(value)
    if not isinstance(value, str):
        raise ValueError("expected a size, e.g. 64KiB, 10MB or a number of bytes")
    text = value.strip()
    if text.isdigit():
        return int(text)
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"invalid size '{value}': expected e.g. 512B, 64KiB, 10MB, 1GiB or a number of bytes")
    number, unit = m.groups()
    if "." not in number:
        return int(number) * _SIZE_UNITS[unit]
    whole, frac = number.split(".")
    # Exact integer arithmetic: 1.5KiB is 1536 bytes, never 1535.9999.
    numerator = int(whole + frac) * _SIZE_UNITS[unit]
    denominator = 10 ** len(frac)
    if numerator % denominator:
        raise ValueError(f"invalid size '{value}': not a whole number of bytes")
    return numerator // denominator


def format_size(size: int) -> str:
    """The inverse of `parse_size`: 65536 -> '64KiB', 64000000 -> '64MB', 100 -> '100B'."""
    spellings = [f"{size // scale}{unit}" for unit, scale in _SIZE_UNITS.items()
                 if size >= scale and size % scale == 0]
    # Shortest wins, binary on a tie: 64000000 is '64MB', not '62500KiB'.
    return min(reversed(spellings or [f"{size}B"]), key=len)


# --- rates -----------------------------------------------------------------------------

def parse_rate(value) -> float:
    """`100/s`, `6000/m`, `10/h` -> float events per second (must be > 0)."""
    if not isinstance(value, str):
        raise ValueError("expected a rate with a unit, e.g. 100/s, 6000/m, 10/h")
    m = _RATE_RE.match(value.strip())
    if m is None:
        raise ValueError(f"invalid rate '{value}': expected e.g. 100/s, 6000/m, 10/h")
    number, unit = m.groups()
    rate = float(number) / _RATE_UNITS[unit]
    if rate <= 0:
        raise ValueError(f"invalid rate '{value}': must be more than zero")
    return rate


def format_rate(per_second: float) -> str:
    """The inverse of `parse_rate`: 100.0 -> '100/s', 100/60 -> '100/m'."""
    candidates = []
    for unit, scale in (("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        candidates += [t + "/" + unit for t in _number_texts(per_second * scale)]
    # Prefer the shortest exact spelling (100/60 reads better as '100/m').
    candidates.sort(key=len)
    return _shortest_exact(per_second, candidates, parse_rate)


# --- percentages -----------------------------------------------------------------------

def parse_percent(value) -> float:
    """`20%`, `0.5%` or a bare number of percent (`5`) -> fraction 0..1.

    A bare number is a percentage, not a fraction, as with Envoy's Percent: `percent: 1`
    in a fault section means one request in a hundred.
    """
    if _is_number(value):
        number = float(value)
    elif isinstance(value, str):
        m = _PERCENT_RE.match(value.strip())
        if m is None:
            raise ValueError(f"invalid percentage '{value}': expected e.g. 20%, 0.5%")
        number = float(m.group(1))
    else:
        raise ValueError("expected a percentage, e.g. 20%")
    if not 0.0 <= number <= 100.0:
        raise ValueError(f"invalid percentage {value}: must be between 0% and 100%")
    return number / 100.0


def format_percent(fraction: float) -> str:
    """The inverse of `parse_percent`: 0.2 -> '20%'."""
    return _shortest_exact(fraction, [t + "%" for t in _number_texts(fraction * 100.0)], parse_percent)


# --- hosts, ports, addresses -----------------------------------------------------------

def parse_port(value) -> int:
    """A TCP port, 1..65535."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("expected a port number (1..65535)")
    if not 1 <= value <= 65535:
        raise ValueError(f"invalid port {value}: must be 1..65535")
    return value


def parse_host(text: str) -> str:
    """An IP address or a DNS name; names come back lower-cased, IPv6 without brackets."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.lower()
    if ":" in name:
        raise ValueError(f"invalid host '{text}'")
    if not _HOSTNAME_RE.match(name):
        raise ValueError(f"invalid host name '{text}'")
    return name


def _split_port(text: str, what: str) -> tuple[str, str | None]:
    """'host:port' / '[v6]:port' / 'host' -> (host text, port text or None)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"invalid {what} '{text}': missing ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest == "":
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"invalid {what} '{text}': expected ':port' after ']'")
        return host, rest[1:]
    if text.count(":") > 1:
        # Bare IPv6: a trailing ':80' would be ambiguous, so a port needs brackets.
        return text, None
    host, sep, port = text.partition(":")
    return host, (port if sep else None)


def _port_from_text(port_text: str, whole: str) -> int:
    if not port_text.isdigit():
        raise ValueError(f"invalid port '{port_text}' in '{whole}'")
    return parse_port(int(port_text))


def parse_address(value) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port), with the port checked to be 1..65535."""
    if not isinstance(value, str):
        raise ValueError("expected host:port, e.g. 127.0.0.1:15000 or [::1]:15000")
    text = value.strip()
    host_text, port_text = _split_port(text, "address")
    if port_text is None:
        if text.count(":") > 1 and not text.startswith("["):
            raise ValueError(f"invalid address '{value}': an IPv6 address needs brackets, e.g. [::1]:15000")
        raise ValueError(f"invalid address '{value}': expected host:port, e.g. 127.0.0.1:15000")
    if not host_text:
        raise ValueError(f"invalid address '{value}': missing host (use 0.0.0.0 for all interfaces)")
    host = parse_host(host_text)
    if text.startswith("[") and ":" not in host:
        raise ValueError(f"invalid address '{value}': brackets are for IPv6 addresses")
    return host, _port_from_text(port_text, value)


def format_address(address: tuple[str, int]) -> str:
    """The inverse of `parse_address`: ('::1', 80) -> '[::1]:80'."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_cidr(text: str) -> str:
    """'10.96.0.0/12' (or a single address) -> the normalised network, e.g. '10.0.0.5/32'."""
    try:
        return str(ipaddress.ip_network(text.strip(), strict=True))
    except ValueError as e:
        if "host bits set" in str(e):
            raise ValueError(f"invalid CIDR '{text}': has host bits set "
                             f"(did you mean '{ipaddress.ip_network(text.strip(), strict=False)}'?)") from None
        raise ValueError(f"invalid CIDR '{text}'") from None


def split_host_port(text: str, what: str) -> tuple[str, int | None]:
    """'name:80', 'name', '10.0.0.0/8:80', '[fd00::/8]:80' -> (host or cidr text, port or None)."""
    host_text, port_text = _split_port(text.strip(), what)
    if not host_text:
        raise ValueError(f"invalid {what} '{text}': missing host")
    port = None if port_text is None else _port_from_text(port_text, text)
    return host_text, port
