"""`carbonsched service install|uninstall|status` into a directory tree laid out like a machine
(the hidden --root): real useradd/groupadd --prefix and `systemctl --root`, no service manager.
Running under a real systemd is tests/carbonsched/service/test_systemd_real.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from carbonsched.config import load_config
from carbonsched.policies import PolicySource, policy_from_source

CARBONSCHED = Path(sys.executable).parent / "carbonsched"
GPU_GID = 4242  # owns the tree's /dev/dri/renderD128, under the group name "gpuusers"
PROVIDER = "static:FRA"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.geteuid() != 0, reason="useradd/groupadd --prefix need root")]


def run_service(root: Path | None, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CARBONSCHED_SERVICE_ROOT"}
    if root is not None:
        env["CARBONSCHED_SERVICE_ROOT"] = str(root)
    env.update(extra_env or {})
    return subprocess.run([str(CARBONSCHED), "service", *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A machine with a video group but no render group, and one DRI node owned by gpuusers."""
    root = tmp_path / "machine"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text(f"root:x:0:\nvideo:x:44:\ngpuusers:x:{GPU_GID}:\n")
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).write_text("")
        os.chmod(root / "etc" / name, 0o640)
    node = root / "dev" / "dri" / "renderD128"
    node.parent.mkdir(parents=True)
    node.touch()
    os.chown(node, 0, GPU_GID)
    return root


def unit_settings(unit_text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit_text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Every path under root with its mode, mtime and content (or link target)."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            content: bytes | str = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = ""
        state[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, content)
    return state


def test_install_creates_account_config_policy_and_enabled_unit(tree):
    result = run_service(tree, "install", "--provider", PROVIDER)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "provider static:FRA (--provider)"
    assert "not started" in result.stdout

    passwd = (tree / "etc" / "passwd").read_text()
    group = (tree / "etc" / "group").read_text()
    assert any(line.startswith("carbonsched:") and line.endswith(":/usr/sbin/nologin") for line in passwd.splitlines())
    assert any(line.startswith("carbonsched:") for line in group.splitlines())

    config = tree / "etc" / "carbonsched" / "carbonsched.toml"
    policy = tree / "etc" / "carbonsched" / "policy.toml"
    unit = tree / "etc" / "systemd" / "system" / "carbonsched.service"
    for path in (config, policy, unit):
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert (tree / "etc" / "carbonsched").stat().st_mode & 0o777 == 0o755
    assert load_config(config).policy == Path("/etc/carbonsched/policy.toml")
    assert load_config(config).provider == PROVIDER
    installed_policy = policy_from_source(PolicySource.from_path(policy))
    assert (installed_policy.name, installed_policy.kind) == ("default", "forecast")

    settings = unit_settings(unit.read_text())
    assert settings["ExecStart"] == [f"{CARBONSCHED} run --config /etc/carbonsched/carbonsched.toml"]
    assert settings["User"] == settings["Group"] == ["carbonsched"]
    # video exists, render does not, gpuusers owns the DRI node.
    assert settings["SupplementaryGroups"] == ["gpuusers video"]
    wants = tree / "etc" / "systemd" / "system" / "multi-user.target.wants" / "carbonsched.service"
    assert os.readlink(wants) == "/etc/systemd/system/carbonsched.service"


def test_groups_that_do_not_exist_are_left_out_of_the_unit(tree):
    (tree / "etc" / "group").write_text("root:x:0:\n")
    (tree / "dev" / "dri" / "renderD128").unlink()
    assert run_service(tree, "install", "--provider", PROVIDER).returncode == 0
    settings = unit_settings((tree / "etc" / "systemd" / "system" / "carbonsched.service").read_text())
    assert "SupplementaryGroups" not in settings


def test_second_install_changes_nothing_and_says_so(tree):
    assert run_service(tree, "install", "--provider", PROVIDER).returncode == 0
    before = snapshot(tree)
    again = run_service(tree, "install", "--provider", PROVIDER)
    assert again.returncode == 0, again.stderr
    assert "nothing to change" in again.stdout
    assert snapshot(tree) == before


def test_edited_config_is_kept_unless_a_config_is_given(tree, tmp_path):
    assert run_service(tree, "install", "--provider", PROVIDER).returncode == 0
    config = tree / "etc" / "carbonsched" / "carbonsched.toml"
    config.write_text(f'provider = "{PROVIDER}"\npolicy = "/etc/carbonsched/policy.toml"\nretention_days = 7\n')
    kept = run_service(tree, "install", "--provider", PROVIDER)
    assert "kept as it is" in kept.stdout and "nothing to change" in kept.stdout
    assert "retention_days = 7" in config.read_text()

    new_config = tmp_path / "site.toml"
    new_config.write_text('policy = "/etc/carbonsched/policy.toml"\nretention_days = 30\n')
    replaced = run_service(tree, "install", "--provider", PROVIDER, "--config", str(new_config))
    assert replaced.returncode == 0, replaced.stderr
    assert "write /etc/carbonsched/carbonsched.toml (0644): replaced" in replaced.stdout
    # The given config names no provider: --provider's is added in front of it.
    assert config.read_text() == f'provider = "{PROVIDER}"\n' + new_config.read_text()


def test_given_policy_is_installed(tree):
    constant = Path(__file__).resolve().parents[3] / "policies" / "constant.toml"
    assert run_service(tree, "install", "--provider", PROVIDER, "--policy", str(constant)).returncode == 0
    assert (tree / "etc" / "carbonsched" / "policy.toml").read_text() == constant.read_text()


def test_dry_run_prints_every_file_and_command_and_touches_nothing(tree):
    before = snapshot(tree)
    result = run_service(tree, "install", "--provider", PROVIDER, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert snapshot(tree) == before
    out = result.stdout
    assert f"would   $ groupadd --prefix {tree} --system carbonsched" in out
    assert "would   $ useradd --prefix" in out
    for path in ("/etc/carbonsched/carbonsched.toml", "/etc/carbonsched/policy.toml", "/etc/systemd/system/carbonsched.service"):
        assert f"would   write {path} (0644): new" in out
    assert f"    | ExecStart={CARBONSCHED} run --config /etc/carbonsched/carbonsched.toml" in out
    assert '    | policy = "/etc/carbonsched/policy.toml"' in out
    assert f"would   $ systemctl --root={tree} enable carbonsched.service" in out


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["install", "dry-run"])
def test_without_a_provider_the_install_is_refused_listing_the_choices(tree, dry_run):
    before = snapshot(tree)
    result = run_service(tree, "install", *dry_run)  # stdin is not a terminal: nothing to ask
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: no provider given: pass --provider with one of electricitymaps:ZONE, watttime:REGION, "
        "ukgrid[:region=N], static:ISO3, trace (the bundled synthetic trace, not this node's grid)"]
    assert result.stdout == ""
    assert snapshot(tree) == before


def test_the_synthetic_trace_is_installed_only_when_named_and_said_to_be_synthetic(tree):
    result = run_service(tree, "install", "--provider", "trace", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "provider trace (--provider): the bundled synthetic trace, not this node's grid"
    assert '    | provider = "trace"' in result.stdout


def test_a_terminal_is_asked_for_the_provider(tree):
    import pty

    controller, terminal = pty.openpty()
    try:
        env = {k: v for k, v in os.environ.items() if k != "CARBONSCHED_SERVICE_ROOT"}
        env["CARBONSCHED_SERVICE_ROOT"] = str(tree)
        os.write(controller, b"static:DEU\n")
        done = subprocess.run([str(CARBONSCHED), "service", "install", "--dry-run"], stdin=terminal,
                              capture_output=True, text=True, env=env, timeout=120)
    finally:
        os.close(controller)
        os.close(terminal)
    assert done.returncode == 0, done.stderr
    assert "Which provider?" in done.stderr
    assert done.stdout.splitlines()[0] == "provider static:DEU (answered here)"
    assert '    | provider = "static:DEU"' in done.stdout


def test_the_provider_comes_from_the_config_then_the_installed_config(tree, tmp_path):
    site = tmp_path / "site.toml"
    site.write_text('provider = "static:DEU"\npolicy = "/etc/carbonsched/policy.toml"\n')
    from_config = run_service(tree, "install", "--config", str(site))
    assert from_config.returncode == 0, from_config.stderr
    assert from_config.stdout.splitlines()[0] == f"provider static:DEU (from --config {site})"

    again = run_service(tree, "install")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "provider static:DEU (from the installed /etc/carbonsched/carbonsched.toml)"
    assert "nothing to change" in again.stdout

    before = snapshot(tree)
    other = run_service(tree, "install", "--provider", "static:FRA")
    assert other.returncode == 2
    assert other.stderr.splitlines() == ["error: /etc/carbonsched/carbonsched.toml sets provider 'static:DEU', not "
                                         "'static:FRA': edit it, or pass --config FILE to replace it"]
    both = run_service(tree, "install", "--provider", "static:FRA", "--config", str(site))
    assert both.returncode == 2 and "differ: pass only one" in both.stderr
    assert snapshot(tree) == before


def test_an_installed_config_without_a_provider_gets_the_given_one(tree):
    assert run_service(tree, "install", "--provider", PROVIDER).returncode == 0
    config = tree / "etc" / "carbonsched" / "carbonsched.toml"
    config.write_text('policy = "/etc/carbonsched/policy.toml"\nretention_days = 7\n')  # as older installs wrote it
    assert run_service(tree, "install").returncode == 2
    added = run_service(tree, "install", "--provider", PROVIDER)
    assert added.returncode == 0, added.stderr
    assert config.read_text() == f'provider = "{PROVIDER}"\npolicy = "/etc/carbonsched/policy.toml"\nretention_days = 7\n'


def test_pythonpath_and_home_directories_are_carried_into_the_unit(tree):
    worktree = str(Path(__file__).resolve().parents[3])
    python_path = f"{worktree}{os.pathsep}/home/builder/src"
    assert run_service(tree, "install", "--provider", PROVIDER, extra_env={"PYTHONPATH": python_path}).returncode == 0
    settings = unit_settings((tree / "etc" / "systemd" / "system" / "carbonsched.service").read_text())
    assert f"'PYTHONPATH={python_path}'" in settings["Environment"] or f"PYTHONPATH={python_path}" in settings["Environment"]
    assert settings["ProtectHome"] == ["tmpfs"]
    assert "/home/builder/src" in settings["BindReadOnlyPaths"][0].split()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--user", "Not A User"], "--user 'Not A User': not a valid system user name"),
        (["--provider", "electricitymaps:"], "--provider 'electricitymaps:': provider spec 'electricitymaps:': empty zone"),
        (["--config", "/nonexistent/carbonsched.toml"], "--config /nonexistent/carbonsched.toml: cannot read"),
        (["--policy", "POLICY_WITH_UNKNOWN_KIND"], "--policy "),
        (["--config", "CONFIG_WITH_UNKNOWN_KEY"], "colour: unknown key"),
        (["--config", "CONFIG_WITH_MISSING_POLICY"], "policy /etc/carbonsched/site-policy.toml does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tree, tmp_path, args, message):
    bad_policy = tmp_path / "bad-policy.toml"
    bad_policy.write_text('kind = "no-such-kind"\nname = "x"\n')
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text('colour = "green"\n')
    missing_policy = tmp_path / "missing-policy.toml"
    missing_policy.write_text('policy = "site-policy.toml"\n')  # relative: resolved in /etc/carbonsched/
    files = {"POLICY_WITH_UNKNOWN_KIND": bad_policy, "CONFIG_WITH_UNKNOWN_KEY": bad_config, "CONFIG_WITH_MISSING_POLICY": missing_policy}
    args = [str(files[a]) if a in files else a for a in args]
    before = snapshot(tree)
    result = run_service(tree, "install", "--provider", PROVIDER, *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    assert message in result.stderr
    assert snapshot(tree) == before


def test_uninstall_keeps_config_state_and_user_unless_purged(tree):
    assert run_service(tree, "install", "--provider", PROVIDER).returncode == 0
    store = tree / "var" / "lib" / "carbonsched" / "carbonsched.sqlite3"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"jobs")
    units = tree / "etc" / "systemd" / "system"

    removed = run_service(tree, "uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (units / "carbonsched.service").exists()
    assert not (units / "multi-user.target.wants" / "carbonsched.service").is_symlink()
    assert store.read_bytes() == b"jobs" and (tree / "etc" / "carbonsched" / "carbonsched.toml").is_file()
    assert "carbonsched:" in (tree / "etc" / "passwd").read_text()
    assert "--purge removes them" in removed.stdout
    assert "nothing to remove" in run_service(tree, "uninstall").stdout

    purged = run_service(tree, "uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not store.parent.exists() and not (tree / "etc" / "carbonsched").exists()
    assert "carbonsched:" not in (tree / "etc" / "passwd").read_text()
    assert "carbonsched:" not in (tree / "etc" / "group").read_text()


def test_status_tells_installed_from_missing_and_changed(tree):
    missing = run_service(tree, "status")
    assert missing.returncode == 3
    assert "carbonsched.service missing" in missing.stdout

    assert run_service(tree, "install", "--provider", PROVIDER).returncode == 0
    installed = run_service(tree, "status")
    assert installed.returncode == 3  # no service manager runs for a tree: never "running"
    assert "installed, as `service install` writes it" in installed.stdout
    assert "user      carbonsched uid" in installed.stdout
    assert "enabled; no service manager runs" in installed.stdout

    unit = tree / "etc" / "systemd" / "system" / "carbonsched.service"
    unit.write_text(unit.read_text().replace("WatchdogSec=60s", "WatchdogSec=5s"))
    assert "differs from what `service install` would write now" in run_service(tree, "status").stdout


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="this machine runs systemd: a real install would happen")
def test_install_on_a_machine_without_systemd_refuses_before_changing_anything():
    result = run_service(None, "install", "--provider", PROVIDER)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: systemd is not running on this machine (no /run/systemd/system); --dry-run shows the plan"
    assert not Path("/etc/systemd/system/carbonsched.service").exists()


def test_an_environment_under_tmp_is_recognised_as_hidden_from_the_service():
    """A live install from such an environment is refused: PrivateTmp=yes would hide it."""
    from carbonsched.service.host import under_private_tmp

    assert under_private_tmp(Path("/tmp/ci/main/.venv/bin/carbonsched")) == Path("/tmp")
    assert under_private_tmp(Path("/var/tmp/env/bin/carbonsched")) == Path("/var/tmp")
    assert under_private_tmp(Path("/opt/carbonsched/bin/carbonsched")) is None
    assert under_private_tmp(Path("/tmpfiles/carbonsched")) is None
