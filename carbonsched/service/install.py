"""Install, remove and inspect carbonsched as a systemd service.

An install is idempotent: each part (group, user, /etc/carbonsched, config, policy, unit, enabled
and running) is compared with what is wanted and only the differences become steps. Files the
operator may have edited (config, policy) are written when missing and replaced only when the
install names a new one (``--config``/``--policy``).

The provider is never defaulted: it comes from ``--provider``, else from the ``--config`` file, else
from the config already installed (:func:`chosen_provider`); with none of them the install is
refused (:class:`ProviderMissing`), so the bundled synthetic trace is installed only when named.
An installed config without a provider gets the chosen one added; one naming another provider is
left alone and the install refused, so an operator's edits are never overwritten unasked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from carbonsched.config import ConfigError, DaemonConfig, load_config, parse_config
from carbonsched.service.host import Host, environment_paths_under_home, executable_in_this_environment, under_private_tmp
from carbonsched.service.plan import MakeDirectory, Plan, RemovePath, RunCommand, ServiceError, WriteFile, run_command
from carbonsched.service.unit import (
    CONFIG_DIR, CONFIG_FILE, POLICY_FILE, STATE_DIR, UNIT_FILE, UNIT_NAME, UnitParameters, render_unit,
)

DEFAULT_USER = "carbonsched"
USER_NAME_PATTERN = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
WANTS_LINK = Path("/etc/systemd/system/multi-user.target.wants") / UNIT_NAME
DROP_IN_DIR = Path("/etc/systemd/system") / f"{UNIT_NAME}.d"
POLICY_HEADER = (
    "# The policy carbonsched serves ρ from. Edit it, check it with `carbonsched policy check FILE`,\n"
    "# then `systemctl reload carbonsched`. More examples: policies/*.toml in the source tree.\n"
)


PROVIDER_PLACEHOLDER = "@PROVIDER@"
# The kinds suggested first when a provider must be named: the live grids, then the synthetic trace last.
SUGGESTED_KINDS = ("electricitymaps", "watttime", "ukgrid", "static", "trace")


@dataclass(frozen=True)
class InstallOptions:
    user: str = DEFAULT_USER
    config_file: Path | None = None  # installed as /etc/carbonsched/carbonsched.toml; None: the commented default
    policy_file: Path | None = None  # installed as /etc/carbonsched/policy.toml; None: the built-in default policy
    provider: str | None = None  # --provider; None: the --config file's, else the installed config's


@dataclass(frozen=True)
class ProviderChoice:
    """The provider spec the installed daemon will use, and where it was found."""

    spec: str
    origin: str

    def describe(self) -> str:
        from carbonsched.providers.spec import parse_specs

        # A bare `trace` is the bundled synthetic one; `trace:FILE` replays the operator's file.
        synthetic = any(spec.kind == "trace" and spec.zone is None for spec in parse_specs(self.spec))
        return (f"provider {self.spec} ({self.origin})"
                + (": the bundled synthetic trace, not this node's grid" if synthetic else ""))


class ProviderMissing(ServiceError):
    """Nothing names the provider: the install needs ``--provider``."""

    def __init__(self) -> None:
        from carbonsched.providers.registry import loadable_kinds

        usage = {kind.name: kind.usage for kind in loadable_kinds()}
        kinds = [name for name in SUGGESTED_KINDS if name in usage] + [name for name in usage if name not in SUGGESTED_KINDS]
        self.forms = ", ".join(usage[name] for name in kinds)
        super().__init__(f"no provider given: pass --provider with one of {self.forms}", 2)


def checked_provider(spec: str, where: str) -> str:
    """``spec`` when it parses as a provider spec; a ServiceError (exit 2) naming ``where`` otherwise."""
    from carbonsched.providers import ProviderSpecError
    from carbonsched.providers.spec import parse_specs

    try:
        parse_specs(spec)
    except ProviderSpecError as exc:
        raise ServiceError(f"{where} {spec!r}: {exc}", 2) from None
    return spec.strip()


def _config_provider(path: Path) -> str | None:
    try:
        return load_config(path).provider
    except ConfigError:
        return None


def chosen_provider(host: Host, options: InstallOptions) -> ProviderChoice:
    """The provider the install writes (see the module docstring); ProviderMissing when none is named."""
    from_config = _config_provider(options.config_file) if options.config_file else None
    if options.provider is not None:
        spec = checked_provider(options.provider, "--provider")
        if from_config is not None and from_config != spec:
            raise ServiceError(f"--provider {spec!r} and --config {options.config_file}'s provider "
                               f"{from_config!r} differ: pass only one", 2)
        return ProviderChoice(spec, "--provider")
    if from_config is not None:
        return ProviderChoice(checked_provider(from_config, f"--config {options.config_file}: provider"),
                              f"from --config {options.config_file}")
    installed = host.path(CONFIG_FILE)
    if options.config_file is None and installed.is_file():
        spec = _config_provider(installed)
        if spec is not None:
            return ProviderChoice(spec, f"from the installed {CONFIG_FILE}")
    raise ProviderMissing()


def with_provider(config_text: str, spec: str) -> str:
    """``config_text`` with ``provider = spec`` as its first setting (top-level keys precede tables)."""
    return f"provider = {json.dumps(spec)}\n" + config_text


@dataclass(frozen=True)
class ServiceState:
    enabled: bool
    active: bool


def check_user_name(user: str) -> str:
    if not USER_NAME_PATTERN.match(user):
        raise ServiceError(f"--user {user!r}: not a valid system user name ([a-z_][a-z0-9_-]*, at most 32)", 2)
    return user


def default_config_text(provider: str) -> str:
    """The commented default config, with ``provider`` set."""
    template = resources.files("carbonsched.service").joinpath("carbonsched.toml").read_text(encoding="utf-8")
    return template.replace(json.dumps(PROVIDER_PLACEHOLDER), json.dumps(provider))


def default_policy_text() -> str:
    from carbonsched.policies import default_policy_path

    return POLICY_HEADER + Path(default_policy_path()).read_text(encoding="utf-8")


def _read_source(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ServiceError(f"--{what} {path}: cannot read: {getattr(exc, 'strerror', None) or exc}", 2) from None


def validated_config_text(path: Path, host: Host) -> str:
    """The text of a config to install; it must load, and a policy it names (resolved from its
    installed place, /etc/carbonsched/) must be the installed policy or exist on the host."""
    text = _read_source(path, "config")
    try:
        load_config(path)
        installed = parse_config(tomllib.loads(text), CONFIG_FILE, DaemonConfig())
    except (ConfigError, tomllib.TOMLDecodeError) as exc:
        raise ServiceError(f"--config {exc}", 2) from None
    policy = installed.policy
    if policy is not None and policy != POLICY_FILE and not host.path(policy).is_file():
        raise ServiceError(f"--config {path}: policy {policy} does not exist (installed at {CONFIG_FILE})", 2)
    return text


def validated_policy_text(path: Path) -> str:
    from carbonsched.policies import PolicyFileError, PolicySource, policy_from_source

    text = _read_source(path, "policy")
    try:
        policy_from_source(PolicySource.from_path(path))
    except PolicyFileError as exc:
        raise ServiceError(f"--policy {'; '.join(str(exc).splitlines())}", 2) from None
    return text


def unit_parameters(host: Host, user: str) -> UnitParameters:
    executable = executable_in_this_environment() or (Path(found) if (found := shutil.which("carbonsched")) else None)
    if executable is None:
        raise ServiceError("no `carbonsched` executable next to this Python or on PATH: install the package first")
    hidden = under_private_tmp(executable)
    if hidden is not None and service_manager_running(host):  # a unit that could be started here
        raise ServiceError(
            f"{executable} lies under {hidden}, which the service's PrivateTmp=yes hides: "
            "install carbonsched into an environment outside /tmp and /var/tmp", 2,
        )
    python_path = os.environ.get("PYTHONPATH") or None
    return UnitParameters(
        executable=executable,
        user=user,
        supplementary_groups=tuple(g for g in host.supplementary_groups() if g != user),
        read_only_home_paths=tuple(environment_paths_under_home(python_path)),
        python_path=python_path,
    )


def service_manager_running(host: Host) -> bool:
    """sd_booted(3): systemd is PID 1 of the machine the host stands for."""
    return host.is_live and Path("/run/systemd/system").is_dir()


def service_state(host: Host) -> ServiceState:
    if not service_manager_running(host):
        return ServiceState(enabled=host.path(WANTS_LINK).is_symlink(), active=False)
    enabled = run_command(["systemctl", "is-enabled", UNIT_NAME], check=False).stdout.strip() == "enabled"
    active = run_command(["systemctl", "is-active", UNIT_NAME], check=False).stdout.strip() in ("active", "reloading")
    return ServiceState(enabled=enabled, active=active)


def _account_steps(plan: Plan, host: Host, user: str) -> None:
    prefix = [] if host.is_live else ["--prefix", str(host.root)]
    if host.group_gid(user) is None:
        plan.add(RunCommand(("groupadd", *prefix, "--system", user)))
    else:
        plan.unchanged.append(f"group {user} exists")
    if host.user_uid(user) is None:
        plan.add(RunCommand((
            "useradd", *prefix, "--system", "--gid", user, "--no-create-home", "--home-dir", str(STATE_DIR),
            "--shell", "/usr/sbin/nologin", "--comment", "carbonsched daemon", user,
        )))
    else:
        plan.unchanged.append(f"user {user} exists")


def _file_step(plan: Plan, host: Host, path: Path, content: str, *, replace: bool) -> bool:
    """Add a write of ``path`` if needed; True when the file will change."""
    target = host.path(path)
    current = target.read_text(encoding="utf-8", errors="replace") if target.is_file() else None
    if current == content:
        plan.unchanged.append(f"{path} up to date")
        return False
    if current is not None and not replace:
        plan.unchanged.append(f"{path} kept as it is (edited here; pass a file to replace it)")
        return False
    plan.add(WriteFile(path, content, 0o644, "new" if current is None else "replaced"))
    return True


def _config_to_write(host: Host, options: InstallOptions, provider: str) -> tuple[str, bool]:
    """The config text to install with ``provider``, and whether it replaces an installed one."""
    if options.config_file is not None:
        text = validated_config_text(options.config_file, host)
        return (text if _config_provider(options.config_file) is not None else with_provider(text, provider)), True
    installed = host.path(CONFIG_FILE)
    if installed.is_file():
        try:
            installed_provider = load_config(installed).provider
        except ConfigError:
            installed_provider = provider  # kept as it is; `service status` says it does not load
        if installed_provider is None:
            return with_provider(installed.read_text(encoding="utf-8", errors="replace"), provider), True
        if installed_provider != provider:
            raise ServiceError(f"{CONFIG_FILE} sets provider {installed_provider!r}, not {provider!r}: edit it, "
                               "or pass --config FILE to replace it", 2)
    return default_config_text(provider), False


def plan_install(host: Host, options: InstallOptions) -> Plan:
    """Everything an install would change on ``host``, reading only. ``options.provider`` must be
    set (see :func:`chosen_provider`)."""
    user = check_user_name(options.user)
    if options.provider is None:
        raise ProviderMissing()
    config_text, replace_config = _config_to_write(host, options, options.provider)
    policy_text = validated_policy_text(options.policy_file) if options.policy_file else default_policy_text()
    unit_text = render_unit(unit_parameters(host, user))

    plan = Plan()
    _account_steps(plan, host, user)
    if not host.path(CONFIG_DIR).is_dir():
        plan.add(MakeDirectory(CONFIG_DIR, 0o755))
    settings_changed = _file_step(plan, host, CONFIG_FILE, config_text, replace=replace_config)
    settings_changed |= _file_step(plan, host, POLICY_FILE, policy_text, replace=options.policy_file is not None)
    unit_changed = _file_step(plan, host, UNIT_FILE, unit_text, replace=True)

    state = service_state(host)
    if not host.is_live:
        if not state.enabled:
            plan.add(RunCommand(("systemctl", f"--root={host.root}", "enable", UNIT_NAME)))
        else:
            plan.unchanged.append(f"{UNIT_NAME} enabled")
        plan.notes.append(f"no service manager runs for {host.root}: the service is not started")
        return plan
    if not service_manager_running(host):
        plan.notes.append("systemd is not running on this machine: the systemctl steps cannot run here")
    if unit_changed:
        plan.add(RunCommand(("systemctl", "daemon-reload")))
    if not state.enabled and not state.active:
        plan.add(RunCommand(("systemctl", "enable", "--now", UNIT_NAME)))
    elif not state.enabled:
        plan.add(RunCommand(("systemctl", "enable", UNIT_NAME)))
    elif not state.active:
        plan.add(RunCommand(("systemctl", "start", UNIT_NAME)))
    if state.active and unit_changed:
        plan.add(RunCommand(("systemctl", "restart", UNIT_NAME)))
    elif state.active and settings_changed:
        plan.add(RunCommand(("systemctl", "reload", UNIT_NAME)))
    if state.enabled and state.active:
        plan.unchanged.append(f"{UNIT_NAME} enabled and running")
    return plan


def installed_user(host: Host) -> str | None:
    """The User= of the installed unit, if there is one."""
    unit = host.path(UNIT_FILE)
    if not unit.is_file():
        return None
    for line in unit.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("User="):
            return line.partition("=")[2].strip()
    return None


def plan_uninstall(host: Host, user: str, *, purge: bool) -> Plan:
    check_user_name(user)
    plan = Plan()
    state = service_state(host)
    if host.is_live:
        if state.enabled or state.active:
            plan.add(RunCommand(("systemctl", "disable", "--now", UNIT_NAME)))
    elif state.enabled:
        plan.add(RunCommand(("systemctl", f"--root={host.root}", "disable", UNIT_NAME)))
    if host.path(UNIT_FILE).exists():
        plan.add(RemovePath(UNIT_FILE))
        if host.is_live:
            plan.add(RunCommand(("systemctl", "daemon-reload")))
    if not purge:
        kept = [str(p) for p in (CONFIG_DIR, STATE_DIR) if host.path(p).exists()]
        if host.user_uid(user) is not None:
            kept.append(f"user {user}")
        if kept:
            plan.notes.append(f"kept {', '.join(kept)} (--purge removes them)")
        return plan
    for path in (DROP_IN_DIR, CONFIG_DIR, STATE_DIR):
        if host.path(path).exists():
            plan.add(RemovePath(path))
    prefix = () if host.is_live else ("--prefix", str(host.root))
    if host.user_uid(user) is not None:
        plan.add(RunCommand(("userdel", *prefix, user)))
    if host.group_gid(user) is not None:
        # userdel removes a same-named primary group itself where USERGROUPS_ENAB is set.
        plan.add(RunCommand(("groupdel", *prefix, user), only_if=lambda: host.group_gid(user) is not None))
    return plan


def require_privileges(host: Host) -> None:
    """Before changing anything on the live machine: root, and a running systemd."""
    if not host.is_live:
        return
    if os.geteuid() != 0:
        raise ServiceError("must run as root (sudo); --dry-run shows what would be done")
    if not service_manager_running(host):
        raise ServiceError("systemd is not running on this machine (no /run/systemd/system); --dry-run shows the plan")
