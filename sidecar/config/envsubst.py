"""`${ENV_VAR}` substitution in config values.

Forms: `${NAME}` (an error when NAME is unset), `${NAME:-default}` (the default when NAME is
unset or empty, as in the shell), and `$${` for a literal `${`. Only values are substituted,
never keys. The loader substitutes on YAML nodes, after parsing, so error lines stay those
of the file and a value cannot inject YAML structure.
"""
from __future__ import annotations

import re
from typing import Mapping

__all__ = ["substitute", "has_reference"]

# Alternatives, in order: the escape, a complete reference, an unterminated one.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def has_reference(text: str) -> bool:
    """True if `text` has anything for `substitute` to do."""
    return "${" in text


def substitute(text: str, env: Mapping[str, str]) -> str:
    """Expand the references in `text` from `env`.

    Raises ValueError naming every unset variable or malformed reference in `text`.
    """
    problems: list[str] = []

    def expand(m: re.Match) -> str:
        whole = m.group(0)
        if whole == "$${":
            return "${"
        body = m.group(1)
        if body is None:
            problems.append("unterminated '${' (missing '}')")
            return whole
        name, sep, default = body.partition(":-")
        if not _NAME.match(name):
            problems.append(f"invalid environment reference '{whole}'")
            return whole
        value = env.get(name)
        if sep:
            return value if value else default
        if value is None:
            problems.append(f"environment variable {name} is not set")
            return whole
        return value

    result = _REFERENCE.sub(expand, text)
    if problems:
        raise ValueError("; ".join(problems))
    return result
