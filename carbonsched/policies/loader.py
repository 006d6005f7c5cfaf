"""Finding a policy kind (built in or from an entry point) and loading/checking policy files."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from carbonsched.policies import builtin
from carbonsched.policies.base import Policy
from carbonsched.policies.fields import describe_value
from carbonsched.policies.problems import PolicyFileError, PolicyProblem
from carbonsched.policies.source import PolicySource

ENTRY_POINT_GROUP = "carbonsched.policies"

# Built-in kinds resolve without installed metadata (e.g. running from a source tree) and cannot be
# shadowed by a plugin registering the same name.
BUILTIN_KINDS: dict[str, type[Policy]] = {
    cls.kind: cls for cls in (builtin.ConstantPolicy, builtin.StepsPolicy, builtin.LinearPolicy,
                              builtin.ForecastPolicy, builtin.BudgetPolicy)
}

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def policy_entry_points() -> dict[str, metadata.EntryPoint]:
    """Entry points in the ``carbonsched.policies`` group, by kind name."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_kinds() -> list[str]:
    return sorted(set(BUILTIN_KINDS) | set(policy_entry_points()))


def _resolve_kind(kind: str, source: PolicySource) -> tuple[Any, PolicyProblem | None]:
    if kind in BUILTIN_KINDS:
        return BUILTIN_KINDS[kind], None
    entry_point = policy_entry_points().get(kind)
    if entry_point is None:
        return None, source.problem("kind", f"unknown kind '{kind}'; known kinds: {', '.join(available_kinds())}")
    try:
        factory = entry_point.load()
    except Exception as err:  # a broken plugin must not take the daemon down
        return None, source.problem("kind", f"plugin '{kind}' ({entry_point.value}) failed to load: "
                                            f"{type(err).__name__}: {err}")
    if not callable(getattr(factory, "from_table", None)):
        return None, source.problem("kind", f"plugin '{kind}' ({entry_point.value}) has no from_table()")
    return factory, None


def _parse(source: PolicySource) -> Mapping[str, Any]:
    try:
        return tomllib.loads(source.text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        position = _TOML_POSITION.search(message)
        if position is None:
            raise PolicyFileError([source.problem(None, f"TOML syntax error: {message}")]) from err
        line, column = int(position.group(1)), int(position.group(2))
        text = message[: position.start()]
        raise PolicyFileError([source.problem(None, f"TOML syntax error at column {column}: {text}",
                                              line=line)]) from err


def policy_from_source(source: PolicySource) -> Policy:
    """Build a policy from a source; raises PolicyFileError listing every problem found."""
    table = _parse(source)
    kind = table.get("kind")
    if kind is None:
        raise PolicyFileError([source.problem("kind", f"required field is missing; one of: "
                                                      f"{', '.join(available_kinds())}")])
    if not isinstance(kind, str):
        raise PolicyFileError([source.problem("kind", f"must be a string, got {describe_value(kind)}")])
    factory, problem = _resolve_kind(kind, source)
    if problem is not None:
        raise PolicyFileError([problem])
    try:
        policy = factory.from_table(table, source=source)
    except PolicyFileError:
        raise
    except Exception as err:
        raise PolicyFileError([source.problem("kind", f"plugin '{kind}' failed on this file: "
                                                      f"{type(err).__name__}: {err}")]) from err
    if not isinstance(policy, Policy):
        raise PolicyFileError([source.problem("kind", f"plugin '{kind}' returned {type(policy).__name__}, "
                                                      f"not a Policy")])
    return policy


def load_policy(path: str | Path) -> Policy:
    """Load the policy file at ``path``. Raises PolicyFileError (PolicyFileUnreadable when the file
    cannot be read); ``str(err)`` has one ``FILE:LINE: field 'x': message`` line per problem."""
    return policy_from_source(PolicySource.from_path(path))


def check_policy_file(path: str | Path) -> list[PolicyProblem]:
    """Every problem in the policy file at ``path``; empty when it loads."""
    try:
        load_policy(path)
    except PolicyFileError as err:
        return list(err.problems)
    return []


def default_policy_path() -> Path:
    """The policy the daemon uses when none is configured (shipped inside the package)."""
    return Path(str(resources.files("carbonsched").joinpath("data", "default_policy.toml")))


__all__ = ["ENTRY_POINT_GROUP", "available_kinds", "check_policy_file",
           "default_policy_path", "load_policy", "policy_entry_points", "policy_from_source"]
