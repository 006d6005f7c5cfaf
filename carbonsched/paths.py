"""Where the daemon's socket and state live: where a daemon listens and where its clients look."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from carbonsched.daemon.server import socket_in_use

SOCKET_NAME = "carbonsched.sock"
STORE_NAME = "carbonsched.sqlite3"
SYSTEM_RUNTIME_DIR = Path("/run/carbonsched")
# Where the systemd service's socket directory is looked for; tests point it at a temp dir.
SYSTEM_RUNTIME_DIR_ENV = "CARBONSCHED_SYSTEM_RUNTIME_DIR"


def system_runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """The service's runtime directory: $CARBONSCHED_SYSTEM_RUNTIME_DIR, else /run/carbonsched."""
    env = os.environ if env is None else env
    return Path(env[SYSTEM_RUNTIME_DIR_ENV]) if env.get(SYSTEM_RUNTIME_DIR_ENV) else SYSTEM_RUNTIME_DIR


def default_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """Where a daemon started here listens: $CARBONSCHED_SOCKET, else $XDG_RUNTIME_DIR/carbonsched/,
    else the service's /run/carbonsched/ when it exists, else /tmp/carbonsched-$UID/.

    Clients look up the daemon with :func:`client_socket_path` instead."""
    env = os.environ if env is None else env
    if env.get("CARBONSCHED_SOCKET"):
        return Path(env["CARBONSCHED_SOCKET"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "carbonsched" / SOCKET_NAME
    if system_runtime_dir(env).is_dir():
        return system_runtime_dir(env) / SOCKET_NAME
    return private_socket_path()


def private_socket_path() -> Path:
    """A daemon's socket when neither $XDG_RUNTIME_DIR nor the service's directory is there."""
    return Path(f"/tmp/carbonsched-{os.getuid()}") / SOCKET_NAME


def client_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """The daemon socket a client should use: $CARBONSCHED_SOCKET when set; else the first of the
    user's own daemon ($XDG_RUNTIME_DIR/carbonsched/), the service's (/run/carbonsched/) and
    /tmp/carbonsched-$UID/ that accepts a connection; when none does, the service's socket if its
    directory exists (the installed service is what should answer), else where a daemon started
    here would listen.

    A login session sets $XDG_RUNTIME_DIR, so the user's socket wins only while it listens."""
    env = os.environ if env is None else env
    if env.get("CARBONSCHED_SOCKET"):
        return Path(env["CARBONSCHED_SOCKET"])
    service = system_runtime_dir(env) / SOCKET_NAME
    candidates = [service, private_socket_path()]
    if env.get("XDG_RUNTIME_DIR"):
        candidates.insert(0, Path(env["XDG_RUNTIME_DIR"]) / "carbonsched" / SOCKET_NAME)
    for candidate in candidates:
        if socket_in_use(candidate):
            return candidate
    return service if service.parent.is_dir() else default_socket_path(env)


def is_service_socket(path: Path, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``path`` is the systemd service's socket."""
    return Path(path).parent == system_runtime_dir(env)


def how_to_start(path: Path, env: Mapping[str, str] | None = None) -> str:
    """What starts the daemon that should listen at ``path``: the service or `carbonsched run`."""
    if is_service_socket(path, env):
        return "sudo systemctl start carbonsched"
    return "carbonsched run"


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """$CARBONSCHED_STATE_DIR, else systemd's $STATE_DIRECTORY (first entry), else
    ~/.local/state/carbonsched ($XDG_STATE_HOME honoured)."""
    env = os.environ if env is None else env
    if env.get("CARBONSCHED_STATE_DIR"):
        return Path(env["CARBONSCHED_STATE_DIR"])
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "carbonsched"
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "carbonsched"


def store_path(state_dir: Path) -> Path:
    return state_dir / STORE_NAME


def ensure_private_dir(path: Path, mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) if missing; a directory we create gets ``mode``.

    An existing directory keeps its mode: systemd's RuntimeDirectoryMode decides it there.
    """
    if not path.is_dir():
        path.mkdir(parents=True, mode=mode, exist_ok=True)
        os.chmod(path, mode)
    return path


class UnsafeDirectoryError(Exception):
    pass


def ensure_runtime_dir(path: Path, mode: int = 0o750) -> Path:
    """Create the socket's directory if missing; refuse one owned by another user (e.g. a
    pre-created /tmp/carbonsched-$UID) or writable by everyone."""
    ensure_private_dir(path, mode)
    st = path.stat()
    if st.st_uid not in (os.getuid(), 0):
        raise UnsafeDirectoryError(f"{path} is owned by uid {st.st_uid}, not by us")
    if st.st_mode & 0o002 and not st.st_mode & 0o1000:
        raise UnsafeDirectoryError(f"{path} is world-writable")
    return path
