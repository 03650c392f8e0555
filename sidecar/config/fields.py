"""The building blocks of the config schema: value kinds, fields and sections.

Theory of operation. `schema.py` declares the file as a tree of `Section`s, each a list of
`Field(key, kind, doc)`. Every kind knows three things, so that nothing is written twice:

  parse(node, path, ctx)  a YAML node -> the model's value; problems are recorded in the
                          ParseContext (with the dotted path and the node's line) and the
                          kind returns an `Invalid` instead of raising, so one pass finds
                          every error in the file;
  json_schema()           the same rules as JSON Schema (draft 2020-12);
  dump(value)             a parsed value -> the file's own spelling ('5s', '64KiB'); used for
                          the effective defaults and /config_dump, and it parses back equal.

A section backed by a model dataclass takes its defaults from that dataclass (model.py is
the one place defaults live); a section without a model (route policy sections) yields a
plain dict and declares its defaults on its fields.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
from typing import Any, Callable, Optional

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .context import Invalid, ParseContext, Scalar, is_invalid, join, partial_of

__all__ = [
    "Kind", "Str", "Bool", "Int", "Enum", "Unit", "ListOf", "MapOf", "ByShape",
    "Field", "Section", "FROM_MODEL", "SECTION_DEFAULTS",
]

# --- kinds -----------------------------------------------------------------------------

class Kind:
    """A kind of value. `describe` completes 'expected ...' in messages."""
    describe = "a value"
    empty_when_null = False        # a bare `key:` means empty (sections, lists, maps)

    def parse(self, node: Node, path: str, ctx: ParseContext):
        raise NotImplementedError

    def json_schema(self) -> dict:
        raise NotImplementedError

    def dump(self, value):
        return value

    def parse_empty(self, path: str, ctx: ParseContext, node: Node):
        raise NotImplementedError


class ScalarKind(Kind):
    """Base of single-value kinds: subclasses implement `convert(Scalar)` raising ValueError."""

    def parse(self, node, path, ctx):
        if not isinstance(node, ScalarNode):
            ctx.error(path, node, f"expected {self.describe}, got {ctx.shape(node, path)}")
            return Invalid()
        scalar = ctx.scalar(node, path)
        if isinstance(scalar, Invalid):
            return scalar
        if scalar.value is None:
            ctx.error(path, node, f"expected {self.describe}, got null")
            return Invalid()
        try:
            return self.convert(scalar)
        except ValueError as e:
            ctx.error(path, node, str(e))
            return Invalid()

    def convert(self, scalar: Scalar):
        raise NotImplementedError


class Str(ScalarKind):
    """A string, taken as written (so `version: 1.10` stays '1.10'), optionally checked
    and converted by `then` (which raises ValueError with the reason)."""

    def __init__(self, then: Optional[Callable[[str], Any]] = None, describe: str = "a string",
                 schema: Optional[dict] = None, dump: Optional[Callable] = None, allow_empty: bool = False):
        self.then, self.describe, self._schema = then, describe, schema
        self._dump, self.allow_empty = dump, allow_empty

    def convert(self, scalar):
        text = scalar.text
        if text == "" and not self.allow_empty:
            raise ValueError("must not be empty")
        return self.then(text) if self.then else text

    def json_schema(self):
        schema = {"type": "string"} if self.allow_empty else {"type": "string", "minLength": 1}
        return dict(self._schema) if self._schema is not None else schema

    def dump(self, value):
        return self._dump(value) if self._dump else value


class Bool(ScalarKind):
    describe = "true or false"

    def convert(self, scalar):
        if not isinstance(scalar.value, bool):
            raise ValueError(f"expected true or false, got '{scalar.text}'")
        return scalar.value

    def json_schema(self):
        return {"type": "boolean"}


class Int(ScalarKind):
    describe = "an integer"

    def __init__(self, minimum: Optional[int] = None, maximum: Optional[int] = None):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, scalar):
        value = scalar.value
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"expected an integer, got '{scalar.text}'")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"must be at most {self.maximum}, got {value}")
        return value

    def json_schema(self):
        schema = {"type": "integer"}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


class Enum(ScalarKind):
    """One of a fixed set of words (matched as written: `mode: off` is the word, not false)."""

    def __init__(self, *choices: str):
        self.choices = choices
        self.describe = "one of " + ", ".join(choices)

    def convert(self, scalar):
        if scalar.text in self.choices:
            return scalar.text
        close = difflib.get_close_matches(scalar.text, self.choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"'{scalar.text}' is not one of: {', '.join(self.choices)}{hint}")

    def json_schema(self):
        return {"enum": list(self.choices)}


class Unit(ScalarKind):
    """A value with a unit, parsed once by one of the `units.parse_*` functions."""

    def __init__(self, parse: Callable, format: Callable, describe: str, schema: dict,
                 positive: bool = False, from_text: bool = True):
        self._parse, self._format, self.describe, self._schema = parse, format, describe, schema
        self.positive = positive
        # Durations, rates and addresses are read from the text (`1:30` is then an
        # address, not YAML 1.1's sexagesimal 90); sizes and percents take bare numbers.
        self.from_text = from_text

    def convert(self, scalar):
        raw = scalar.text if self.from_text or isinstance(scalar.value, str) else scalar.value
        value = self._parse(raw)
        if self.positive and value <= 0:
            raise ValueError(f"must be more than 0, got '{scalar.text}'")
        return value

    def json_schema(self):
        return copy.deepcopy(self._schema)

    def dump(self, value):
        return self._format(value)


class ListOf(Kind):
    """A list of `item`s; `unique_by` names an attribute that must not repeat."""
    empty_when_null = True

    def __init__(self, item: Kind, unique_by: Optional[str] = None):
        self.item, self.unique_by = item, unique_by
        self.describe = "a list"

    def parse(self, node, path, ctx):
        if not isinstance(node, SequenceNode):
            hint = " (write [x] for a single item)" if isinstance(node, ScalarNode) else ""
            ctx.error(path, node, f"expected a list, got {ctx.shape(node, path)}{hint}")
            return Invalid([])
        items = []
        for index, item_node in enumerate(node.value):
            item_path = join(path, index)
            ctx.visit(item_path, item_node)
            items.append(self.item.parse(item_node, item_path, ctx))
        if self.unique_by:
            self._check_unique(items, path, ctx)
        return Invalid(items) if any(is_invalid(i) for i in items) else items

    def _check_unique(self, items, path, ctx):
        first_seen: dict[Any, int] = {}
        for index, item in enumerate(items):
            known = partial_of(item)
            value = known.get(self.unique_by) if isinstance(known, dict) else getattr(known, self.unique_by, None)
            if value is None or is_invalid(value):
                continue
            if value in first_seen:
                where = join(join(path, index), self.unique_by)
                first = ctx.line_of(join(join(path, first_seen[value]), self.unique_by))
                ctx.error_at(where, f"duplicate {self.unique_by} '{value}' (first at line {first})")
            else:
                first_seen[value] = index

    def parse_empty(self, path, ctx, node):
        return []

    def json_schema(self):
        return {"type": "array", "items": self.item.json_schema()}

    def dump(self, value):
        return [self.item.dump(v) for v in value]


class MapOf(Kind):
    """A mapping of free-form keys (checked by `key`, which may normalise) to `value`s."""
    empty_when_null = True
    describe = "a mapping"

    def __init__(self, key: Callable[[str], str], value: Kind, key_doc: str = ""):
        self.key, self.value, self.key_doc = key, value, key_doc

    def parse(self, node, path, ctx):
        if not isinstance(node, MappingNode):
            ctx.error(path, node, f"expected a mapping, got {ctx.shape(node, path)}")
            return Invalid({})
        result, ok = {}, True
        for key_text, knode, vnode in ctx.mapping_pairs(node, path):
            item_path = join(path, key_text)
            ctx.visit(item_path, vnode)
            try:
                key = self.key(key_text)
            except ValueError as e:
                ctx.error(item_path, knode, str(e))
                ok = False
                continue
            value = self.value.parse(vnode, item_path, ctx)
            ok = ok and not is_invalid(value)
            result[key] = value
        return result if ok else Invalid(result)

    def parse_empty(self, path, ctx, node):
        return {}

    def json_schema(self):
        schema = {"type": "object", "additionalProperties": self.value.json_schema()}
        if self.key_doc:
            schema["propertyNames"] = {"description": self.key_doc}
        return schema

    def dump(self, value):
        return {k: self.value.dump(v) for k, v in value.items()}


class ByShape(Kind):
    """A value that may be written in more than one shape (a name, or a list of entries)."""

    def __init__(self, scalar: Kind, sequence: Kind, dump_with: Kind):
        self.scalar, self.sequence, self.dump_with = scalar, sequence, dump_with
        self.describe = f"{scalar.describe} or {sequence.describe}"

    def parse(self, node, path, ctx):
        kind = self.sequence if isinstance(node, SequenceNode) else self.scalar
        return kind.parse(node, path, ctx)

    def json_schema(self):
        return {"anyOf": [self.scalar.json_schema(), self.sequence.json_schema()]}

    def dump(self, value):
        return self.dump_with.dump(value)


# --- fields and sections ---------------------------------------------------------------

FROM_MODEL = object()          # Field default: the model dataclass's own default
SECTION_DEFAULTS = object()    # Field default: the nested section with all its defaults


class Field:
    """One key of a section.

    key       the YAML key; `aliases` are other accepted spellings of it
    kind      how its value is parsed, described and dumped
    attr      the model attribute (or dict key) it fills; defaults to `key`
    default   FROM_MODEL (model-backed sections), SECTION_DEFAULTS, or a value
    nullable  an explicit null is accepted (always so when the default is None)
    flatten   the value is a nested mapping whose fields land on this section's model
              (`telemetry.metrics.listen` -> Telemetry.metrics_listen)
    """

    def __init__(self, key: str, kind: Kind, doc: str = "", *, attr: Optional[str] = None,
                 default=FROM_MODEL, required: bool = False, flatten: bool = False,
                 aliases: tuple[str, ...] = (), nullable: bool = False):
        self.key, self.kind, self.doc = key, kind, doc
        self._nullable = nullable
        self.attr = attr or key
        self.default, self.required, self.flatten, self.aliases = default, required, flatten, aliases
        self._factory: Optional[Callable[[], Any]] = None

    def resolve_default(self, model) -> None:
        """Fix the default once the owning section's model is known."""
        if self.flatten:
            for sub in self.kind.fields:
                sub.resolve_default(model)
            self._factory = lambda: {sub.attr: sub.make_default() for sub in self.kind.fields}
            return
        default = self.default
        if default is FROM_MODEL and not self.required:
            if model is None:
                return      # a flattened sub-field: the enclosing section resolves it
            spec = {f.name: f for f in dataclasses.fields(model)}.get(self.attr)
            if spec is None:
                raise TypeError(f"config field '{self.key}' needs a default (no model attribute '{self.attr}')")
            if spec.default_factory is not dataclasses.MISSING:
                self._factory = spec.default_factory
                return
            if spec.default is dataclasses.MISSING:
                self.required = True
                return
            default = spec.default
        if default is SECTION_DEFAULTS:
            self._factory = lambda: self.kind.defaults()
        elif not self.required:
            self._factory = lambda: copy.deepcopy(default)

    @property
    def nullable(self) -> bool:
        if self.required or self.flatten:
            return False
        return self._nullable or self.make_default() is None

    def make_default(self):
        if self._factory is None:
            raise TypeError(f"config field '{self.key}' has no default")
        return self._factory()

    def parse(self, node: Node, path: str, ctx: ParseContext):
        if ctx.is_null(node, path):
            if self.nullable:
                return None
            if self.kind.empty_when_null:
                return self.kind.parse_empty(path, ctx, node)
        return self.kind.parse(node, path, ctx)

    def dump(self, value):
        return None if value is None else self.kind.dump(value)

    def json_schema(self) -> dict:
        schema = {"description": self.doc} if self.doc else {}
        body = self.kind.json_schema()
        if self.nullable or self.kind.empty_when_null:
            body = {"anyOf": [body, {"type": "null"}]}
        schema.update(body)
        if not self.required:
            schema["default"] = self.dump(self.make_default())
        return schema


class Section(Kind):
    """A mapping with a fixed set of keys, built into `model` (or a dict when there is none).

    `check(values, given, path, ctx)` is for rules that span fields: `values` maps each
    attribute to its value, `given` each attribute set in the file to the key it was set
    under. It records issues with `ctx.error_at` and may fill derived values. It runs once
    every field parsed cleanly, or always with `check_partial` (values may then be Invalid),
    so that cross-references are still checked in a file with other mistakes.
    """
    empty_when_null = True
    describe = "a mapping"

    def __init__(self, fields: list[Field], model=None, check: Optional[Callable] = None,
                 doc: str = "", check_partial: bool = False):
        self.fields, self.model, self.check, self.doc = fields, model, check, doc
        self.check_partial = check_partial
        self.by_key: dict[str, Field] = {}
        for field in fields:
            for key in (field.key, *field.aliases):
                self.by_key[key] = field
            field.resolve_default(model)

    def parse(self, node, path, ctx):
        if not isinstance(node, MappingNode):
            ctx.error(path, node, f"expected a mapping, got {ctx.shape(node, path)}")
            return Invalid({})
        present: dict[Field, tuple[str, Node, Node]] = {}
        for key, knode, vnode in ctx.mapping_pairs(node, path):
            field = self.by_key.get(key)
            if field is None:
                ctx.error(join(path, key), knode, self._unknown_key(key))
            elif field in present:
                first_key, first_node = present[field][:2]
                ctx.error(join(path, key), knode, f"same setting as '{first_key}' "
                          f"(line {first_node.start_mark.line + 1}); give only one")
            else:
                present[field] = (key, knode, vnode)
        return self._build(node, path, ctx, present)

    def parse_empty(self, path, ctx, node):
        return self._build(node, path, ctx, {})

    def defaults(self):
        """The section built from its defaults alone (its fields must all have one)."""
        values = {}
        for field in self.fields:
            if field.flatten:
                values.update(field.make_default())
            else:
                values[field.attr] = field.make_default()
        return self._construct(values)

    def _build(self, node, path, ctx, present):
        issues_before = len(ctx.issues)
        values: dict[str, Any] = {}
        given: dict[str, str] = {}      # attr -> the key it was given under
        for field in self.fields:
            if field in present:
                key, _, vnode = present[field]
                field_path = join(path, key)
                ctx.visit(field_path, vnode)
                value = field.parse(vnode, field_path, ctx)
                given[field.attr] = key
            elif field.required:
                ctx.error(join(path, field.key), node, "required key is missing")
                continue
            else:
                value = field.make_default()
            if field.flatten:
                values.update(partial_of(value) or {})
            else:
                values[field.attr] = value
        clean = len(ctx.issues) == issues_before and not any(is_invalid(v) for v in values.values())
        if self.check and (clean or self.check_partial):
            self.check(values, given, path, ctx)
        if len(ctx.issues) > issues_before or any(is_invalid(v) for v in values.values()):
            return Invalid(values)
        return self._construct(values)

    def _construct(self, values: dict):
        return self.model(**values) if self.model else dict(values)

    def _unknown_key(self, key: str) -> str:
        close = difflib.get_close_matches(key, list(self.by_key), n=1, cutoff=0.6)
        if close:
            return f"unknown key; did you mean '{close[0]}'?"
        return "unknown key; expected one of: " + ", ".join(f.key for f in self.fields)

    def json_schema(self):
        properties, required = {}, []
        for field in self.fields:
            properties[field.key] = field.json_schema()
            for alias in field.aliases:
                properties[alias] = {**field.json_schema(), "description": f"same as '{field.key}'"}
            if field.required:
                required.append(field.key)
        schema = {"type": "object", "additionalProperties": False, "properties": properties}
        if self.doc:
            schema = {"description": self.doc, **schema}
        if required:
            schema["required"] = required
        return schema

    def dump(self, value):
        get = value.get if isinstance(value, dict) else (lambda attr: getattr(value, attr))
        out = {}
        for field in self.fields:
            if field.flatten:
                out[field.key] = {sub.key: sub.dump(get(sub.attr)) for sub in field.kind.fields}
            else:
                out[field.key] = field.dump(get(field.attr))
        return out
