"""`carbonsched doctor`: what this node can measure and serve, each problem with a one-line fix.

Checks only report names of credentials, never their values; the rendered output is also passed
through the providers' redaction with every credential this environment holds.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from carbonsched.power.cpu import DEFAULT_POWERCAP_ROOT, CpuRamMeter
from carbonsched.power.nvml import NVML_INSTALL_HINT, GpuMeter

Status = Literal["ok", "warn", "fail"]
SUN_PATH_MAX_BYTES = 107  # sockaddr_un.sun_path is 108 bytes on Linux, including the NUL


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str = ""


# -- power -----------------------------------------------------------------------------------------


def check_gpu(nvml_module: Any = None) -> list[Check]:
    meter = GpuMeter(nvml_module)
    try:
        status = meter.status()
    finally:
        meter.close()
    if not status["devices"]:
        reason = status["reason"]
        fix = NVML_INSTALL_HINT if "no GPUs" not in reason else "none needed on a CPU-only node"
        return [Check("nvml", "warn", f"no GPU energy: {reason}", fix)]
    checks = [Check("nvml", "ok", f"NVML sees {len(status['devices'])} GPU(s)")]
    for dev in status["devices"]:
        label = f"gpu:{dev['index']} ({dev['name']})"
        if dev["energy_source"] == "nvml_counter":
            checks.append(Check(f"gpu:{dev['index']}", "ok", f"{label}: energy counter"))
        elif dev["energy_source"] == "nvml_power_integrated":
            checks.append(Check(
                f"gpu:{dev['index']}", "warn",
                f"{label}: no energy counter, falls back to power integration ({dev['reason']})",
                "none needed; keep the daemon's sample interval short (about 1 s) for accuracy",
            ))
        else:
            checks.append(Check(
                f"gpu:{dev['index']}", "warn", f"{label}: not measured: {dev['reason']}",
                "check `nvidia-smi -q -d POWER` on this GPU; energy for it is not recorded",
            ))
    return checks


def check_cpu_ram(powercap_root: Path = DEFAULT_POWERCAP_ROOT) -> list[Check]:
    status = CpuRamMeter(powercap_root=powercap_root).status()
    cpu, ram = status["cpu"], status["ram"]
    checks = []
    if cpu.get("source") == "rapl":
        checks.append(Check("cpu_energy", "ok", f"RAPL counters: {', '.join(cpu['domains'])}"))
    else:
        rapl_problem = cpu.get("rapl") or cpu.get("reason", "")
        if "permission" in rapl_problem:
            fix = (
                f"sudo chmod o+r {powercap_root}/intel-rapl:*/energy_uj (lost at reboot; persist it with a "
                "udev rule or tmpfiles.d), or run the service in a group that may read them"
            )
        else:
            fix = "none on VMs and CPUs without RAPL; otherwise load the kernel module: sudo modprobe intel_rapl_common"
        if cpu.get("available"):
            a = cpu["assumptions"]
            message = (
                f"{rapl_problem}; CPU energy is estimated: {a['cpu_model']}, TDP {a['tdp_w']:g} W "
                f"({a['tdp_basis']}), {a['power_model']}"
            )
            checks.append(Check("cpu_energy", "warn", message, fix))
        else:
            checks.append(Check("cpu_energy", "fail", f"no CPU energy: {cpu['reason']}", "pip install codecarbon; " + fix))
    if ram.get("source") == "rapl":
        checks.append(Check("ram_energy", "ok", "RAPL DRAM counters"))
    elif ram.get("available"):
        a = ram["assumptions"]
        checks.append(Check(
            "ram_energy", "ok",
            f"estimated by CodeCarbon: {a['power_w']:g} W for {a['memory_gb']:g} GB ({a['power_model']})",
        ))
    else:
        checks.append(Check("ram_energy", "warn", f"no RAM energy: {ram['reason']}", "pip install codecarbon"))
    return checks


# -- provider --------------------------------------------------------------------------------------


def check_provider(spec_text: str | None, env: Mapping[str, str], check_network: bool = False) -> list[Check]:
    try:
        from carbonsched.providers import DEFAULT_PROVIDER_SPEC, ProviderSpecError
        from carbonsched.providers.registry import declaration_of
        from carbonsched.providers.spec import parse_specs
    except ImportError as exc:
        return [Check("provider", "warn", f"cannot check the provider: {exc}", "reinstall carbonsched")]
    checks = []
    defaulted = spec_text is None
    if spec_text is None:
        spec_text = DEFAULT_PROVIDER_SPEC
        checks.append(Check(
            "location", "warn",
            f"location unknown: no --provider given; falling back to {DEFAULT_PROVIDER_SPEC!r}"
            + (" (a replayed trace, not this node's grid)" if DEFAULT_PROVIDER_SPEC.startswith("trace") else ""),
            "pass --provider with your grid zone, e.g. electricitymaps:DE, watttime:CAISO_NORTH, static:FRA",
        ))
    try:
        specs = parse_specs(spec_text)
    except ProviderSpecError as exc:
        return checks + [Check("provider", "fail", str(exc), "fix the --provider spec (see `carbonsched --help`)")]
    for spec in specs:
        declared = declaration_of(spec.kind, spec.text)
        missing = declared.missing_credentials(env)
        if missing:
            checks.append(Check(
                f"provider:{spec.text}", "fail",
                f"{spec.kind} credentials missing: {', '.join(credential.env_var for credential in missing)}",
                "; ".join(credential.hint() for credential in missing),
            ))
        else:
            needs = ", ".join(credential.env_var for credential in declared.credentials)
            checks.append(Check(f"provider:{spec.text}", "ok", f"{spec.kind}: " + (f"{needs} set" if needs else "no credentials needed")))
        note = None if defaulted else declared.doctor_note(spec)
        if note is not None:
            checks.append(Check("location", "warn", note.message, note.fix))
    if check_network:
        checks.append(_fetch(spec_text, env))
    return checks


def _fetch(spec_text: str, env: Mapping[str, str]) -> Check:
    try:
        from carbonsched.providers import build_provider

        reading = build_provider(spec_text, env=env).current()
    except Exception as exc:  # any failure is the finding; ProviderError messages carry no secrets
        return Check("provider_fetch", "fail", f"fetch failed: {exc}", "check network access, credentials and zone")
    return Check(
        "provider_fetch", "ok",
        f"{reading.provider}: {reading.intensity_g_per_kwh:g} gCO2e/kWh ({reading.signal}, zone {reading.zone})",
    )


# -- directories -----------------------------------------------------------------------------------


def _writable_dir_problem(directory: Path) -> str | None:
    """None if ``directory`` can hold new files, else what is wrong.

    Tried for real (root passes every ``os.access`` test, even on read-only mounts): missing
    directories are created for the test and removed again.
    """
    created: list[Path] = []
    try:
        missing = directory
        while not missing.exists():
            created.append(missing)
            missing = missing.parent
        if not missing.is_dir():
            return f"{directory} cannot be created: {missing} is not a directory"
        for path in reversed(created):
            path.mkdir()
        with tempfile.TemporaryFile(dir=directory):
            pass
        return None
    except OSError as exc:
        verb = "created" if created else "written"
        return f"{directory} cannot be {verb} ({exc.strerror or exc})"
    finally:
        for path in created:
            try:
                path.rmdir()
            except OSError:
                pass


def check_socket(socket_path: Path) -> Check:
    problem = _writable_dir_problem(socket_path.parent)
    if problem:
        return Check("socket", "fail", f"socket {socket_path}: {problem}",
                     f"sudo install -d -o $USER -m 0700 {socket_path.parent}, or pass --socket PATH")
    if len(os.fsencode(str(socket_path))) > SUN_PATH_MAX_BYTES:
        return Check("socket", "fail", f"socket path is longer than {SUN_PATH_MAX_BYTES} bytes: {socket_path}",
                     "pass a shorter --socket PATH")
    from carbonsched.daemon.server import socket_in_use

    if socket_in_use(socket_path):
        return Check("socket", "ok", f"socket {socket_path} is in use by a running daemon (carbonsched status shows it)")
    return Check("socket", "ok", f"socket {socket_path} can be created")


def check_state_dir(state_dir: Path) -> Check:
    problem = _writable_dir_problem(state_dir)
    if problem:
        return Check("state_dir", "fail", f"state dir: {problem}",
                     f"sudo install -d -o $USER -m 0700 {state_dir}, or pass --state-dir DIR")
    return Check("state_dir", "ok", f"state dir {state_dir} is writable")


def _default_paths(env: Mapping[str, str]) -> tuple[Path | None, Path | None]:
    try:
        from carbonsched.paths import default_socket_path, default_state_dir
    except ImportError:
        return None, None
    return default_socket_path(env), default_state_dir(env)


# -- running and rendering -------------------------------------------------------------------------


def run_checks(
    *,
    socket_path: Path | None = None,
    state_dir: Path | None = None,
    provider_spec: str | None = None,
    check_network: bool = False,
    nvml_module: Any = None,
    powercap_root: Path = DEFAULT_POWERCAP_ROOT,
    env: Mapping[str, str] | None = None,
) -> list[Check]:
    env = os.environ if env is None else env
    default_socket, default_state = _default_paths(env)
    socket_path = socket_path or default_socket
    state_dir = state_dir or default_state
    checks = check_gpu(nvml_module) + check_cpu_ram(Path(powercap_root))
    checks += check_provider(provider_spec, env, check_network)
    for path, check, option in ((socket_path, check_socket, "--socket"), (state_dir, check_state_dir, "--state-dir")):
        if path is None:
            checks.append(Check(option.lstrip("-"), "warn", "no default location known", f"pass {option}"))
        else:
            checks.append(check(Path(path)))
    return checks


def secrets_in(env: Mapping[str, str]) -> list[str]:
    """Every credential value present in ``env`` (or its systemd credential files), for redaction."""
    try:
        from carbonsched.providers.registry import loadable_kinds
    except ImportError:
        return []
    credentials = [credential for kind in loadable_kinds() for credential in kind.credentials]
    return [value for credential in credentials if (value := credential.read(env))]


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == "fail" for c in checks) else 0


def render_text(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"[{c.status:<4}] {c.name:<{width}}  {c.message}")
        if c.fix and c.status != "ok":
            lines.append(f"       {'':<{width}}  fix: {c.fix}")
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    lines.append(f"{fails} failed, {warns} warning(s), {len(checks) - fails - warns} ok")
    return "\n".join(lines)


def render_json(checks: list[Check]) -> str:
    return json.dumps({"ok": exit_code(checks) == 0, "checks": [asdict(c) for c in checks]}, indent=2)


def redact(text: str, env: Mapping[str, str]) -> str:
    try:
        from carbonsched.providers.secrets import redact as redact_secrets
    except ImportError:
        return text
    return redact_secrets(text, secrets_in(env))
