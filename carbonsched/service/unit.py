"""The systemd unit as installed on one machine: the shipped template (``carbonsched.service``
beside this module, also at systemd/carbonsched.service) with the machine's own ExecStart,
account, GPU groups, the home directories the interpreter needs, and the installed README."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

UNIT_NAME = "carbonsched.service"
CONFIG_DIR = Path("/etc/carbonsched")
CONFIG_FILE = CONFIG_DIR / "carbonsched.toml"
POLICY_FILE = CONFIG_DIR / "policy.toml"
UNIT_FILE = Path("/etc/systemd/system") / UNIT_NAME
STATE_DIR = Path("/var/lib/carbonsched")


def shipped_unit_text() -> str:
    return resources.files("carbonsched.service").joinpath(UNIT_NAME).read_text(encoding="utf-8")


def installed_readme() -> Path:
    """systemd/README.md as installed with the package (beside this module): what the unit's
    ``Documentation=`` names (``systemctl status`` shows it as Docs:) wherever pip put it."""
    return Path(str(resources.files("carbonsched.service").joinpath("README.md")))


@dataclass(frozen=True)
class UnitParameters:
    """What differs between machines; everything else is the shipped template."""

    executable: Path
    user: str = "carbonsched"
    supplementary_groups: tuple[str, ...] = ()
    read_only_home_paths: tuple[Path, ...] = ()  # under /home or /root: bound into ProtectHome=tmpfs
    python_path: str | None = None  # PYTHONPATH the install ran with, carried into the service


def _replace_setting(lines: list[str], key: str, values: list[str]) -> list[str]:
    """Put ``key=value`` lines where ``key`` first appears, dropping its other assignments."""
    out: list[str] = []
    placed = False
    for line in lines:
        if line.split("=", 1)[0].strip() == key and not line.lstrip().startswith("#"):
            if not placed:
                out.extend(f"{key}={value}" for value in values)
                placed = True
            continue
        out.append(line)
    if not placed:
        raise ValueError(f"{UNIT_NAME} template has no {key}= line")
    return out


def _insert_after(lines: list[str], anchor_key: str, new_lines: list[str]) -> list[str]:
    index = max(i for i, line in enumerate(lines) if line.split("=", 1)[0].strip() == anchor_key)
    return lines[: index + 1] + new_lines + lines[index + 1 :]


def render_unit(params: UnitParameters, template: str | None = None) -> str:
    lines = (template if template is not None else shipped_unit_text()).splitlines()
    exec_start = f"{shlex.quote(str(params.executable))} run --config {CONFIG_FILE}"
    lines = _replace_setting(lines, "ExecStart", [exec_start])
    lines = _replace_setting(lines, "Documentation", [installed_readme().as_uri()])
    lines = _replace_setting(lines, "User", [params.user])
    lines = _replace_setting(lines, "Group", [params.user])
    if params.supplementary_groups:
        lines = _replace_setting(lines, "SupplementaryGroups", [" ".join(params.supplementary_groups)])
    else:
        lines = [line for line in lines if not line.startswith("SupplementaryGroups=")]
    if params.read_only_home_paths:
        lines = _replace_setting(lines, "ProtectHome", ["tmpfs"])
        bound = " ".join(shlex.quote(str(p)) for p in params.read_only_home_paths)
        lines = _insert_after(lines, "ProtectHome", [f"BindReadOnlyPaths={bound}"])
    if params.python_path:
        lines = _insert_after(lines, "Environment", [f"Environment={shlex.quote('PYTHONPATH=' + params.python_path)}"])
    return "\n".join(lines) + "\n"
