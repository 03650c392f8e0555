"""Header value templates: `%{name}` variables in `headers.*.set/add` values.

    %{request_id} %{principal} %{client_ip} %{route}   (see fastpath/header_edits.pyx)
    %{claim:NAME}   a claim of the verified JWT (NAME dotted for nested claims; a list's
                    values joined with ",")

Pure Python, shared by the config schema (which refuses an unknown variable, with its
line) and fastpath/header_edits.pyx (which compiles the parts to C).
"""
import re

__all__ = ["VARIABLES", "split_template"]

VARIABLES = ("request_id", "principal", "client_ip", "route")
_VARIABLE = re.compile(r"%\{([^}]*)\}")
_CLAIM = re.compile(r"^claim:[A-Za-z0-9_.:-]+$")


def split_template(value: str) -> list:
    """[(variable name or None, literal text)] of a header value; raises ValueError for an
    unknown %{name}."""
    parts = []
    pos = 0
    for m in _VARIABLE.finditer(value):
        if m.start() > pos:
            parts.append((None, value[pos:m.start()]))
        if m.group(1) not in VARIABLES and not _CLAIM.match(m.group(1)):
            raise ValueError("unknown variable %%{%s}; known: %s, %%{claim:NAME}" % (
                m.group(1), ", ".join("%%{%s}" % v for v in VARIABLES)))
        parts.append((m.group(1), ""))
        pos = m.end()
    if pos < len(value):
        parts.append((None, value[pos:]))
    return parts
