"""Steps that change a machine, each printable before it runs: the install and uninstall plans are
lists of them, so ``--dry-run`` shows exactly what a real run would do."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from carbonsched.service.host import Host


class ServiceError(Exception):
    """The service cannot be installed, removed or inspected; the message is one line."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def run_command(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; a failure (with ``check``) becomes a ServiceError naming the command."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ServiceError(f"{argv[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise ServiceError(f"`{shlex.join(argv)}` did not finish within 120 s") from None
    if check and result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise ServiceError(f"`{shlex.join(argv)}` failed (exit {result.returncode}): {detail[-1] if detail else 'no output'}")
    return result


class Step:
    def describe(self) -> str:
        raise NotImplementedError

    def details(self) -> str:
        """Extra text shown by --dry-run (a file's content)."""
        return ""

    def apply(self, host: Host) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class RunCommand(Step):
    argv: tuple[str, ...]
    only_if: Callable[[], bool] | None = None  # checked when the step runs (e.g. a group that userdel may have removed)

    def describe(self) -> str:
        return f"$ {shlex.join(self.argv)}"

    def apply(self, host: Host) -> None:
        if self.only_if is None or self.only_if():
            run_command(list(self.argv))


@dataclass(frozen=True)
class MakeDirectory(Step):
    path: Path  # on the target system
    mode: int

    def describe(self) -> str:
        return f"create directory {self.path} ({self.mode:04o})"

    def apply(self, host: Host) -> None:
        target = host.path(self.path)
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, self.mode)


@dataclass(frozen=True)
class WriteFile(Step):
    path: Path  # on the target system
    content: str
    mode: int
    reason: str = ""

    def describe(self) -> str:
        return f"write {self.path} ({self.mode:04o}){': ' + self.reason if self.reason else ''}"

    def details(self) -> str:
        return "".join(f"    | {line}\n" for line in self.content.splitlines())

    def apply(self, host: Host) -> None:
        target = host.path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.new")
        partial.write_text(self.content, encoding="utf-8")
        os.chmod(partial, self.mode)
        os.replace(partial, target)


@dataclass(frozen=True)
class RemovePath(Step):
    path: Path  # on the target system; a directory goes with everything in it

    def describe(self) -> str:
        return f"remove {self.path}"

    def apply(self, host: Host) -> None:
        target = host.path(self.path)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # what already is as wanted, one line each
    notes: list[str] = field(default_factory=list)

    def add(self, step: Step) -> None:
        self.steps.append(step)

    def run(self, host: Host, echo: Callable[[str], None], *, dry_run: bool) -> None:
        """Apply the steps in order, printing each; with ``dry_run`` print them (and the files'
        content) without applying."""
        for line in self.unchanged:
            echo(f"ok      {line}")
        for step in self.steps:
            if dry_run:
                echo(f"would   {step.describe()}")
                if step.details():
                    echo(step.details().rstrip("\n"))
            else:
                echo(f"        {step.describe()}")
                step.apply(host)
        for note in self.notes:
            echo(f"note    {note}")
