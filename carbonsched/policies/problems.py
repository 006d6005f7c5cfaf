"""Problems found in a policy file, and the error that carries them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy file. ``line`` is 1-based; None when no line applies."""

    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        if self.field is None:
            return f"{where}: {self.message}"
        return f"{where}: field '{self.field}': {self.message}"


class PolicyFileError(Exception):
    """A policy file could not be turned into a policy. ``str(err)`` is one line per problem."""

    def __init__(self, problems: list[PolicyProblem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0))
        super().__init__("\n".join(str(p) for p in self.problems))


class PolicyFileUnreadable(PolicyFileError):
    """The file itself could not be read (missing, a directory, no permission, not UTF-8)."""
