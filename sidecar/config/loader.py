"""YAML text or file -> a validated `Config`, or a ConfigError listing every problem.

The file is composed into PyYAML nodes (never constructed into Python objects first), so
every value keeps its line, `${VAR}` substitution happens per scalar after parsing, and
`schema.CONFIG` walks the nodes once, collecting all issues before anything is refused.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import yaml

from .errors import ROOT_PATH, ConfigError, ConfigIssue
from .context import ParseContext, is_invalid
from .model import Config
from .schema import CONFIG

__all__ = ["load_config", "load_config_text"]

# libyaml's parser composes the same nodes, with the same marks, ten times faster (a
# 200-route file: ~15 ms instead of ~140 ms): it decides how fast a reload is. Where it
# refuses a document, the pure-Python parser decides, so what is accepted and the
# wording of syntax errors stay PyYAML's.
_FAST_COMPOSER = getattr(yaml, "CSafeLoader", None)


def _compose(text: str):
    if _FAST_COMPOSER is not None:
        try:
            return yaml.compose(text, Loader=_FAST_COMPOSER)
        except yaml.YAMLError:
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


def load_config(path: str, env: Optional[Mapping[str, str]] = None) -> Config:
    """Load and validate the config file at `path`; `Config.source` is set to `path`.

    `env` replaces os.environ for `${VAR}` substitution. Raises ConfigError (every issue,
    in file order), including when the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        text = data.decode("utf-8-sig")
    except OSError as e:
        raise ConfigError([ConfigIssue(ROOT_PATH, None, f"cannot read {path}: {e.strerror or e}")], path) from None
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(ROOT_PATH, line, "the file is not valid UTF-8")], path) from None
    return load_config_text(text, source=path, env=env)


def load_config_text(text: str, source: str = "<string>", env: Optional[Mapping[str, str]] = None) -> Config:
    """Validate config `text` (YAML); an empty document or `{}` gives the defaults.

    Things accepted but doubtful land in `Config.warnings` as `path (line N): reason`.

    `source` is recorded in `Config.source`; `env` replaces os.environ for `${VAR}`
    substitution. Raises ConfigError carrying every issue found, in file order.
    """
    try:
        root = _compose(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        reason = " ".join(filter(None, [e.context, e.problem])) or "invalid YAML"
        raise ConfigError([ConfigIssue(ROOT_PATH, line, f"YAML syntax: {reason}")], source) from None
    except yaml.YAMLError as e:
        raise ConfigError([ConfigIssue(ROOT_PATH, 1, f"YAML syntax: {e}")], source) from None

    ctx = ParseContext(os.environ if env is None else env)
    if root is None or ctx.is_null(root, ""):
        config = Config()
    else:
        ctx.visit("", root)
        config = CONFIG.parse(root, "", ctx)
    if ctx.issues or is_invalid(config):
        # Sorted by line so the report reads top to bottom like the file; the sort is
        # stable, so issues on one line keep the order they were found in.
        issues = sorted(ctx.issues, key=lambda issue: issue.line or 0)
        raise ConfigError(issues, source)
    config.source = source
    config.warnings = [str(w) for w in sorted(ctx.warnings, key=lambda w: w.line or 0)]
    return config
