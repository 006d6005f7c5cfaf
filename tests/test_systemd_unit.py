"""The shipped unit file passes `systemd-analyze verify` cleanly (needs the `systemd` package:
apt-get install -y systemd) and keeps the settings the daemon relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "carbonsched.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}{key}", []).append(value)
    return settings


def test_unit_verifies_without_any_warning(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: apt-get install -y systemd"
    # verify checks that ExecStart's binary exists; point it at the installed entry point.
    installed = Path(sys.executable).parent / "carbonsched"
    unit = tmp_path / "carbonsched.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/carbonsched", str(installed)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_unit_keeps_the_contract_with_the_daemon():
    s = unit_settings()
    assert s["[Service]Type"] == ["notify"]
    assert s["[Service]NotifyAccess"] == ["main"]
    assert s["[Service]WatchdogSec"] and s["[Service]Restart"] == ["on-failure"]
    assert s["[Service]RuntimeDirectory"] == ["carbonsched"] and s["[Service]RuntimeDirectoryMode"] == ["0750"]
    assert s["[Service]StateDirectory"] == ["carbonsched"]
    assert s["[Service]ExecStart"][0].split()[1] == "run"
    assert set(s["[Service]RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert s[f"[Service]{key}"] == ["yes"]
    assert s["[Service]ProtectSystem"] == ["strict"]
    assert "char-nvidia-frontend rw" in s["[Service]DeviceAllow"]
    assert {"electricitymaps_token", "watttime_username", "watttime_password"} <= set(s["[Service]LoadCredential"])
