"""The state of one parse: issues found, the line of every key path, scalar reading.

Scalars are read here, once each: `${VAR}` substitution, then typing exactly as PyYAML's
SafeLoader would type the substituted text. Values that failed to parse travel up the
tree as `Invalid`, so one pass reports every error and later checks can skip them.
"""
from __future__ import annotations

from typing import Any, Mapping

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .envsubst import has_reference, substitute
from .errors import ROOT_PATH, ConfigIssue

__all__ = ["ParseContext", "Scalar", "Invalid", "is_invalid", "partial_of", "join"]

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def join(path: str, key) -> str:
    """Dotted key path of `key` under `path` ('' is the document root)."""
    return f"{path}.{key}" if path else str(key)


class Invalid:
    """Stands for a value that failed to parse (its issues are already recorded).

    `partial` keeps what did parse (a section's field values, a list's items) so that
    cross-reference checks can still run on the rest without inventing spurious errors.
    """
    __slots__ = ("partial",)

    def __init__(self, partial=None):
        self.partial = partial

    def __repr__(self) -> str:
        return f"Invalid({self.partial!r})"


def is_invalid(value) -> bool:
    return isinstance(value, Invalid)


def partial_of(value):
    """What is known of a possibly invalid value (None when nothing is)."""
    return value.partial if isinstance(value, Invalid) else value


def _shape(node: Node, value=None) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "a string"


class Scalar:
    """A scalar after substitution: `text` as written, `value` as YAML types it."""
    __slots__ = ("text", "value")

    def __init__(self, text: str, value):
        self.text, self.value = text, value


class ParseContext:
    """What one parse of a document accumulates: issues, and the line of every path seen."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.issues: list[ConfigIssue] = []
        self.warnings: list[ConfigIssue] = []     # accepted, but worth telling the user
        self.lines: dict[str, int] = {}
        self._scalars: dict[int, Any] = {}
        # Used only for its resolver and SafeConstructor: scalar typing exactly as PyYAML's.
        self._yaml = yaml.SafeLoader("")

    def error(self, path: str, where, reason: str) -> None:
        """Record an issue at `where`: a node, or a 1-based line."""
        line = where if isinstance(where, int) else where.start_mark.line + 1
        self.issues.append(ConfigIssue(path or ROOT_PATH, line, reason))

    def error_at(self, path: str, reason: str) -> None:
        """Record an issue at `path`, on the line of the nearest enclosing key that was seen."""
        self.error(path, self.line_of(path), reason)

    def warn_at(self, path: str, reason: str) -> None:
        """Like error_at, for something accepted that the user should still hear about."""
        self.warnings.append(ConfigIssue(path or ROOT_PATH, self.line_of(path), reason))

    def line_of(self, path: str) -> int:
        while path not in self.lines and path:
            path = path.rpartition(".")[0]
        return self.lines.get(path, 1)

    def visit(self, path: str, node: Node) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)

    def scalar(self, node: ScalarNode, path: str):
        """The node's Scalar after `${VAR}` substitution, or an Invalid (issue recorded)."""
        key = id(node)
        if key not in self._scalars:
            self._scalars[key] = self._read_scalar(node, path)
        return self._scalars[key]

    def _read_scalar(self, node: ScalarNode, path: str):
        text, tag = node.value, node.tag
        if has_reference(text):
            try:
                text = substitute(text, self.env)
            except ValueError as e:
                self.error(path, node, str(e))
                return Invalid()
            # A substituted value is typed as if written plain, quoted or not: `workers: ${N}`
            # is an int, and so is `{workers: "${N}"}` (flow style needs the quotes).
            # String kinds read the text, so they are unaffected.
            tag = self._yaml.resolve(ScalarNode, text, (True, False))
        try:
            value = self._yaml.construct_object(ScalarNode(tag, text, node.start_mark, node.end_mark))
        except yaml.YAMLError as e:
            self.error(path, node, f"cannot read value: {getattr(e, 'problem', None) or e}")
            return Invalid()
        return Scalar(text, value)

    def shape(self, node: Node, path: str) -> str:
        """'a mapping', 'a list', 'null', 'a number'...: what was found, for messages."""
        scalar = self.scalar(node, path) if isinstance(node, ScalarNode) else None
        return _shape(node, scalar.value if isinstance(scalar, Scalar) else "")

    def is_null(self, node: Node, path: str) -> bool:
        if not isinstance(node, ScalarNode):
            return False
        if not has_reference(node.value):
            return node.tag == _NULL_TAG
        scalar = self.scalar(node, path)
        return isinstance(scalar, Scalar) and scalar.value is None

    def mapping_pairs(self, node: MappingNode, path: str) -> list[tuple[str, Node, Node]]:
        """(key, key node, value node) of a mapping, with YAML merge keys (`<<: *base`)
        applied and duplicate keys reported rather than silently dropped."""
        own: dict[str, tuple[str, Node, Node]] = {}
        inherited: dict[str, tuple[str, Node, Node]] = {}
        for knode, vnode in node.value:
            if knode.tag == _MERGE_TAG:
                for source in (vnode.value if isinstance(vnode, SequenceNode) else [vnode]):
                    if not isinstance(source, MappingNode):
                        self.error(join(path, "<<"), source, "a merge key needs a mapping or a list of mappings")
                        continue
                    for pair in self.mapping_pairs(source, path):
                        inherited.setdefault(pair[0], pair)
                continue
            if not isinstance(knode, ScalarNode):
                self.error(path, knode, "keys must be plain strings")
                continue
            key = knode.value
            if key in own:
                first = own[key][1].start_mark.line + 1
                self.error(join(path, key), knode, f"duplicate key (first at line {first})")
                continue
            own[key] = (key, knode, vnode)
        return [pair for key, pair in inherited.items() if key not in own] + list(own.values())
