"""Where the daemon's socket and state live, resolved the same way by the daemon and its clients."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SOCKET_NAME = "carbonsched.sock"
STORE_NAME = "carbonsched.sqlite3"
SYSTEM_RUNTIME_DIR = Path("/run/carbonsched")


def default_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """$CARBONSCHED_SOCKET, else $XDG_RUNTIME_DIR/carbonsched/, else /run/carbonsched/ when it
    exists (the systemd service), else /tmp/carbonsched-$UID/."""
    env = os.environ if env is None else env
    if env.get("CARBONSCHED_SOCKET"):
        return Path(env["CARBONSCHED_SOCKET"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "carbonsched" / SOCKET_NAME
    if SYSTEM_RUNTIME_DIR.is_dir():
        return SYSTEM_RUNTIME_DIR / SOCKET_NAME
    return Path(f"/tmp/carbonsched-{os.getuid()}") / SOCKET_NAME


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
