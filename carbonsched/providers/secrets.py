"""Reading provider credentials, and keeping them out of every message we produce.

A credential comes from an environment variable or, under systemd ``LoadCredential=``, from the
file ``$CREDENTIALS_DIRECTORY/<name>``. The environment wins when both are set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

REDACTED = "***"
_MIN_SECRET_LEN = 4  # shorter strings would redact ordinary words


def read_credential(env: Mapping[str, str], env_var: str, credential_name: str) -> str | None:
    """Return the credential from ``env[env_var]`` or the systemd credential file, else None."""
    value = env.get(env_var, "").strip()
    if value:
        return value
    directory = env.get("CREDENTIALS_DIRECTORY", "").strip()
    if not directory:
        return None
    path = Path(directory) / credential_name
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return value or None


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of each secret in ``text`` with ``***``."""
    for secret in secrets:
        if secret and len(secret) >= _MIN_SECRET_LEN:
            text = text.replace(secret, REDACTED)
    return text


def credential_hint(env_var: str, credential_name: str) -> str:
    """Where a missing credential should go, for error messages (names only, never values)."""
    return f"set {env_var} or provide the systemd credential '{credential_name}' ($CREDENTIALS_DIRECTORY/{credential_name})"


