"""What the service installer needs to know about the machine: accounts, GPU device groups, and
where this Python environment lives.

Everything is read relative to a root directory: ``/`` for the machine itself (accounts through
NSS, so LDAP groups count), any other directory for an image or a test tree (accounts from its
``etc/passwd`` and ``etc/group`` files).
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
from collections.abc import Callable
from pathlib import Path

GPU_GROUP_NAMES = ("video", "render")
GPU_DEVICE_GLOBS = ("dev/nvidia*", "dev/dri/*")
# Trees hidden by the unit's ProtectHome=yes.
HOME_TREES = (Path("/home"), Path("/root"), Path("/run/user"))
# Trees the unit's PrivateTmp=yes replaces with empty ones.
PRIVATE_TMP_TREES = (Path("/tmp"), Path("/var/tmp"))


class Host:
    """A machine (``root`` = ``/``) or a directory tree laid out like one."""

    def __init__(self, root: Path = Path("/")):
        self.root = Path(root)

    @property
    def is_live(self) -> bool:
        """True for the running machine, where systemctl talks to the service manager."""
        return self.root == Path("/")

    def path(self, absolute: Path | str) -> Path:
        """``absolute`` (a path on the target system) as seen from here."""
        return self.root / Path(absolute).relative_to("/")

    def _lookup(self, database: str, key_column: int, key: str, value_column: int) -> str | None:
        """A field of the first ``etc/<database>`` entry whose ``key_column`` equals ``key``."""
        file = self.path(f"/etc/{database}")
        if not file.is_file():
            return None
        for line in file.read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 2 and not line.startswith("#") and fields[key_column] == key:
                return fields[value_column]
        return None

    def _id_of(self, database: str, name: str, live_lookup: Callable[[str], int]) -> int | None:
        """The uid/gid of ``name`` in ``etc/<database>``, or through NSS on the live machine."""
        if not self.is_live:
            found = self._lookup(database, 0, name, 2)
            return None if found is None else int(found)
        try:
            return live_lookup(name)
        except KeyError:
            return None

    def group_gid(self, name: str) -> int | None:
        return self._id_of("group", name, lambda n: grp.getgrnam(n).gr_gid)

    def group_name(self, gid: int) -> str | None:
        if not self.is_live:
            return self._lookup("group", 2, str(gid), 0)
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return None

    def user_uid(self, name: str) -> int | None:
        return self._id_of("passwd", name, lambda n: pwd.getpwnam(n).pw_uid)

    def gpu_device_groups(self) -> list[str]:
        """Named groups (not root) owning the GPU device nodes present on the machine."""
        names = set()
        for pattern in GPU_DEVICE_GLOBS:
            for node in self.root.glob(pattern):
                try:
                    gid = node.stat().st_gid
                except OSError:
                    continue
                name = self.group_name(gid) if gid != 0 else None
                if name:
                    names.add(name)
        return sorted(names)

    def supplementary_groups(self) -> list[str]:
        """video and render where they exist, plus the groups owning GPU device nodes."""
        present = [name for name in GPU_GROUP_NAMES if self.group_gid(name) is not None]
        return sorted(set(present) | set(self.gpu_device_groups()))


def executable_in_this_environment(name: str = "carbonsched") -> Path | None:
    """The console script ``name`` installed next to this interpreter (a venv's bin/)."""
    candidate = Path(sys.executable).parent / name
    return candidate if os.access(candidate, os.X_OK) else None


def _under_home(path: Path) -> bool:
    return any(path == home or home in path.parents for home in HOME_TREES)


def environment_paths_under_home(python_path: str | None) -> list[Path]:
    """The directories this interpreter, its prefixes, the carbonsched package and ``python_path``
    entries need, restricted to home trees and reduced to the outermost ones."""
    import carbonsched

    candidates = [
        Path(sys.executable), Path(sys.executable).resolve(),
        Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.base_exec_prefix),
        Path(carbonsched.__file__).resolve().parent.parent,
        *(Path(entry) for entry in (python_path or "").split(os.pathsep) if entry),
    ]
    directories = {(p.parent if p.is_file() else p).resolve() for p in candidates}
    needed = sorted(d for d in directories if _under_home(d) and d not in HOME_TREES)
    return [d for d in needed if not any(other in d.parents for other in needed)]


def under_private_tmp(path: Path) -> Path | None:
    """The /tmp or /var/tmp tree ``path`` lies in (the service would see it empty), else None."""
    resolved = Path(path).resolve()
    return next((tmp for tmp in PRIVATE_TMP_TREES if resolved == tmp or tmp in resolved.parents), None)
