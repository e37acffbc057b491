"""Credentials the local stack generates per install, kept in owner-only files.

Every secret of the local stack is made the first time a home (`.dualmedia/`) needs
it, from `secrets` (the OS's CSPRNG), and kept under `<home>/secrets/` (a 0700 folder)
in one JSON file per service, each 0600:

- `s3.json`: the access and secret key rclone's S3 server accepts;
- `mlflow.json`: the MLflow admin password and the server's CSRF (Flask) key.

Settings read these files when no explicit value is set (`DUALMEDIA_S3_ACCESS_KEY`,
`DUALMEDIA_MLFLOW_PASSWORD`, ...), so explicit settings always win. Files are created
atomically and never overwritten: two processes starting at once both end up with the
first one's file. Deleting a file (with the stack down) rotates its secrets on the next
`dualmedia up` (docs/security.md).

The MLflow client library takes credentials only from its environment variables; this
module is also where the platform hands them over (`export_mlflow_credentials`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

SECRETS_DIR = "secrets"
S3_FILE = "s3.json"
MLFLOW_FILE = "mlflow.json"

# What the mlflow library reads for HTTP basic auth, on every request it sends.
MLFLOW_USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
MLFLOW_PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"


def secrets_dir(home: Path) -> Path:
    return home / SECRETS_DIR


def new_secret(nbytes: int = 32) -> str:
    """A URL-safe random secret (no comma or quote: it goes into rclone's CSV variable)."""
    return secrets.token_urlsafe(nbytes)


def _private_dir(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != 0o700:
        folder.chmod(0o700)


def _read(path: Path) -> dict[str, str]:
    # A file that someone made readable to others is put back to owner-only.
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def _write_temp(folder: Path, name: str, text: str) -> str:
    """`text` in a new 0600 file of `folder` (mkstemp creates it 0600); its path."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def owner_only_json(path: Path, generate: Callable[[], dict[str, str]]) -> dict[str, str]:
    """The JSON object in `path`; created from `generate()` first when the file is missing.

    The file is 0600 in a 0700 folder from its first byte; creation is a hard link of a
    finished temporary file, so it never overwrites an existing file and never shows a
    half-written one.
    """
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    try:
        _private_dir(path.parent)
        tmp = _write_temp(path.parent, path.name, json.dumps(generate()) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process was first: use its file
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise RuntimeError(
            f"cannot create the local stack's credentials in {path.parent}: {exc.strerror}; "
            "set DUALMEDIA_HOME to a writable folder (or the credentials explicitly)"
        ) from None
    return _read(path)


def replace_owner_only(path: Path, text: str) -> None:
    """Write `text` to `path` as a 0600 file, atomically (the folder is left as it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path.parent, path.name, text)
    os.replace(tmp, path)


# ---- the files of the local stack ---------------------------------------------------------
def local_s3_keys(home: Path) -> dict[str, str]:
    """{'access_key', 'secret_key'} of the local S3 server of `home`."""
    return owner_only_json(
        secrets_dir(home) / S3_FILE,
        lambda: {"access_key": f"dm{secrets.token_hex(10)}", "secret_key": new_secret(30)},
    )


def local_mlflow_secrets(home: Path) -> dict[str, str]:
    """{'password', 'flask_secret_key'} of the local MLflow server of `home`."""
    return owner_only_json(
        secrets_dir(home) / MLFLOW_FILE,
        lambda: {"password": new_secret(24), "flask_secret_key": new_secret(32)},
    )


def ensure_airflow_password(path: Path, username: str, password: str | None) -> None:
    """Airflow standalone's password file, owner-only, holding `username`'s password.

    An explicit `password` replaces the stored one; without one, a password is generated
    here when the user has none, so Airflow never generates one itself (it would print it
    into its log). An existing file is only tightened to 0600.
    """
    try:
        current = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = {}
    if not isinstance(current, dict):
        current = {}
    wanted = password if password is not None else current.get(username) or new_secret(18)
    if current.get(username) != wanted:
        current[username] = wanted
        replace_owner_only(path, json.dumps(current) + "\n")
    else:
        path.chmod(0o600)


# ---- handing MLflow's credentials to the mlflow library -------------------------------------
def export_mlflow_credentials(username: str, password: str | None) -> None:
    """Put the credentials where the mlflow library reads them (its process environment).

    Nothing is exported without a password (an external MLflow without authentication),
    and variables a user set for such a server are left alone.
    """
    if password is None:
        return
    os.environ[MLFLOW_USERNAME_ENV] = username
    os.environ[MLFLOW_PASSWORD_ENV] = password
