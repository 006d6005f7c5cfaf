"""What is installed and whether it runs: the report of `carbonsched service status`."""

from __future__ import annotations

from dataclasses import dataclass, field

from carbonsched.config import ConfigError, load_config
from carbonsched.paths import store_path
from carbonsched.service.host import Host
from carbonsched.service.install import (
    DEFAULT_USER, installed_user, service_manager_running, service_state, unit_parameters,
)
from carbonsched.service.plan import ServiceError, run_command
from carbonsched.service.unit import CONFIG_FILE, POLICY_FILE, STATE_DIR, UNIT_FILE, UNIT_NAME, render_unit

SHOWN_PROPERTIES = ("UnitFileState", "ActiveState", "SubState", "Result", "MainPID", "NRestarts", "StatusText")


@dataclass
class ServiceReport:
    lines: list[str] = field(default_factory=list)
    running: bool = False

    def add(self, label: str, text: str) -> None:
        self.lines.append(f"{label:<9} {text}")


def _unit_line(host: Host, user: str) -> str:
    unit = host.path(UNIT_FILE)
    if not unit.is_file():
        return f"{UNIT_FILE} missing (carbonsched service install)"
    try:
        wanted = render_unit(unit_parameters(host, user))
    except ServiceError as exc:
        return f"{UNIT_FILE} installed; cannot compare: {exc}"
    if unit.read_text(encoding="utf-8", errors="replace") == wanted:
        return f"{UNIT_FILE} installed, as `service install` writes it from this environment"
    return f"{UNIT_FILE} installed, differs from what `service install` would write now"


def _config_line(host: Host) -> str:
    config = host.path(CONFIG_FILE)
    if not config.is_file():
        return f"{CONFIG_FILE} missing"
    try:
        load_config(config)
    except ConfigError as exc:
        return f"{CONFIG_FILE} does not load: {exc}"
    return f"{CONFIG_FILE} loads; policy {POLICY_FILE} {'present' if host.path(POLICY_FILE).is_file() else 'missing'}"


def _systemd_properties() -> dict[str, str]:
    result = run_command(["systemctl", "show", *(f"--property={p}" for p in SHOWN_PROPERTIES), UNIT_NAME], check=False)
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def service_report(host: Host) -> ServiceReport:
    user = installed_user(host) or DEFAULT_USER
    report = ServiceReport()
    report.add("unit", _unit_line(host, user))
    uid, gid = host.user_uid(user), host.group_gid(user)
    report.add("user", f"{user} uid {uid}, group gid {gid}" if uid is not None else f"{user} missing")
    report.add("config", _config_line(host))
    store = store_path(STATE_DIR)
    local_store = host.path(store)
    report.add("state", f"{store} {local_store.stat().st_size} bytes" if local_store.is_file() else f"{store} not created yet")
    if not service_manager_running(host):
        state = service_state(host)
        where = "systemd is not running on this machine" if host.is_live else f"no service manager runs for {host.root}"
        report.add("systemd", f"{'enabled' if state.enabled else 'not enabled'}; {where}")
        return report
    props = _systemd_properties()
    report.add("systemd", f"{props.get('UnitFileState') or 'not installed'}, {props.get('ActiveState')} "
               f"({props.get('SubState')}), pid {props.get('MainPID')}, restarts {props.get('NRestarts')}, "
               f"last result {props.get('Result')}")
    if props.get("StatusText"):
        report.add("status", props["StatusText"])
    report.running = props.get("ActiveState") in ("active", "reloading")
    return report
