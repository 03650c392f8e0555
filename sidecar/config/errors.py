"""The one exception the config package raises, and the issues it carries."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["ConfigIssue", "ConfigError", "ROOT_PATH"]

# The path shown for problems of the document as a whole (YAML syntax, not a mapping).
ROOT_PATH = "<config>"


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file: where (dotted key path, 1-based line) and why."""
    path: str
    line: Optional[int]
    reason: str

    def __str__(self) -> str:
        # line is None only when there is no text to point into (e.g. an unreadable file).
        if self.line is None:
            return f"{self.path}: {self.reason}"
        return f"{self.path} (line {self.line}): {self.reason}"


class ConfigError(ValueError):
    """A config was refused; `.issues` lists every problem found, in file order."""

    def __init__(self, issues: list[ConfigIssue], source: Optional[str] = None):
        self.issues = list(issues)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)

    def __reduce__(self):
        # Rebuilt from the issues, not from the message, when sent between processes.
        return (type(self), (self.issues, self.source))
