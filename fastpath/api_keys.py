"""API key files: which keys are valid, and the principal each one authenticates.

Format: one key per line; `#` starts a comment; blank lines are skipped. A line is either
`PRINCIPAL KEY` (the name authz rules, header values and logs see) or just `KEY`, whose
principal is then `apikey:` and the first 12 hex digits of the key's SHA-256 (never the
key itself). Keys are visible ASCII, at least 16 characters.
"""
import hashlib
import re

__all__ = ["load_api_keys", "parse_api_keys", "MIN_KEY_LENGTH"]

MIN_KEY_LENGTH = 16
_VISIBLE = re.compile(rb"^[\x21-\x7e]+$")


def parse_api_keys(data: bytes) -> dict:
    """key bytes -> principal bytes; raises ValueError naming the bad line."""
    keys = {}
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.split(b"#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) == 1:
            key = words[0]
            principal = b"apikey:" + hashlib.sha256(key).hexdigest()[:12].encode()
        elif len(words) == 2:
            principal, key = words
        else:
            raise ValueError("line %d: expected 'KEY' or 'PRINCIPAL KEY'" % number)
        if len(key) < MIN_KEY_LENGTH or not _VISIBLE.match(key):
            raise ValueError("line %d: a key needs at least %d visible ASCII characters"
                             % (number, MIN_KEY_LENGTH))
        if not _VISIBLE.match(principal):
            raise ValueError("line %d: the principal must be visible ASCII" % number)
        if key in keys:
            raise ValueError("line %d: duplicate key" % number)
        keys[key] = principal
    return keys


def load_api_keys(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError("cannot read %s: %s" % (path, e.strerror or e)) from None
    return parse_api_keys(data)
