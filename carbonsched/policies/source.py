"""The text of a policy file, and where each field sits in it.

tomllib returns plain dicts without positions, so field lines are found by scanning the text:
table headers (``[t]``, ``[[t]]`` counted per occurrence) and ``key =`` lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from carbonsched.policies.problems import PolicyFileUnreadable, PolicyProblem

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")
_BARE_OR_QUOTED = r"(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
_KEY = re.compile(rf"^\s*({_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*)\s*=")
_STRINGS = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'")
_INDEX = re.compile(r"\[\d+\]")


def _split_dotted(name: str) -> list[str]:
    parts = re.findall(_BARE_OR_QUOTED, name)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


@dataclass(frozen=True)
class _LineIndex:
    keys: dict[tuple[str, str], int] = field(default_factory=dict)
    headers: dict[str, int] = field(default_factory=dict)

    @classmethod
    def scan(cls, text: str) -> _LineIndex:
        index = cls()
        table = ""
        array_counts: dict[str, int] = {}
        open_brackets = 0
        in_multiline: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_multiline is not None:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            if open_brackets > 0:
                open_brackets += _bracket_balance(line)
                continue
            header = _HEADER.match(line)
            if header:
                parts = _split_dotted(header.group(2))
                # A sub-table of an array of tables belongs to that array's latest element.
                resolved = []
                for i, part in enumerate(parts):
                    prefix = ".".join(parts[: i + 1])
                    if prefix in array_counts and i < len(parts) - 1:
                        resolved.append(f"{part}[{array_counts[prefix] - 1}]")
                    else:
                        resolved.append(part)
                if header.group(1) == "[[":
                    name = ".".join(parts)
                    array_counts[name] = array_counts.get(name, 0) + 1
                    resolved[-1] = f"{parts[-1]}[{array_counts[name] - 1}]"
                table = ".".join(resolved)
                index.headers.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if not key:
                continue
            index.keys.setdefault((table, ".".join(_split_dotted(key.group(1)))), number)
            value = line[key.end():]
            for quote in ('"""', "'''"):
                if value.count(quote) % 2 == 1:
                    in_multiline = quote
            if in_multiline is None:
                open_brackets = max(0, _bracket_balance(value))
        return index

    def line_of(self, path: str) -> int | None:
        # Most specific first: the key itself, then its table's header, then enclosing keys (an
        # inline table or array such as `gpu_power = {...}`) and headers.
        for candidate in (path, _INDEX.sub("", path)):
            parts = candidate.split(".")
            for end in range(len(parts), 0, -1):
                for i in range(end - 1, -1, -1):
                    hit = self.keys.get((".".join(parts[:i]), ".".join(parts[i:end])))
                    if hit is not None:
                        return hit
                hit = self.headers.get(".".join(parts[:end]))
                if hit is not None:
                    return hit
        return None


def _bracket_balance(text: str) -> int:
    code = _STRINGS.sub("", text).split("#", 1)[0]
    return code.count("[") + code.count("{") - code.count("]") - code.count("}")


class PolicySource:
    """A policy file's name as the user gave it, its text, and a field → line lookup."""

    def __init__(self, text: str, *, display: str, stem: str):
        self.text = text
        self.display = display
        self.stem = stem
        self._index = _LineIndex.scan(text)

    @classmethod
    def from_path(cls, path: str | Path) -> PolicySource:
        """Read ``path`` as UTF-8. Raises PolicyFileUnreadable when that is impossible."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            reason = err.strerror or str(err)
            raise PolicyFileUnreadable([PolicyProblem(str(path), None, None, f"cannot read: {reason}")]) from err
        except UnicodeDecodeError as err:
            raise PolicyFileUnreadable(
                [PolicyProblem(str(path), None, None, f"cannot read: not UTF-8 text ({err.reason})")]
            ) from err
        return cls(text, display=str(path), stem=path.stem)

    def line_of(self, field_path: str) -> int:
        """Line of ``field_path`` (e.g. ``steps[1].rho``, ``gpu_power.above_w``); the enclosing
        table's header when the key is absent; line 1 when nothing matches."""
        return self._index.line_of(field_path) or 1

    def problem(self, field_path: str | None, message: str, *, line: int | None = None) -> PolicyProblem:
        if line is None:
            line = self.line_of(field_path) if field_path else 1
        return PolicyProblem(self.display, line, field_path, message)
