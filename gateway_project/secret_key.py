"""Where SECRET_KEY comes from, and the keys the gateway refuses to run with.

SECRET_KEY signs sessions, CSRF tokens and web chat visitor tokens, and (without
FIELD_ENCRYPTION_KEY) derives the key that encrypts channel secrets at rest. A value that anyone
can read in this repository, or one too short to resist guessing, must never run outside DEBUG.

- ``SECRET_KEY`` set: used as is; outside DEBUG it must not be a published placeholder and must
  be at least 50 characters with at least 5 distinct ones (Django's own ``check --deploy`` bar).
- ``SECRET_KEY`` unset: a random key is generated once per checkout and kept in ``var/secret-key``
  (mode 0600), so ``make run``, the tests and the benchmarks need no configuration and no process
  of this install shares a key with anyone else's. Several machines must set the same SECRET_KEY
  explicitly (docker-compose.yml requires it).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

MIN_LENGTH = 50
MIN_UNIQUE_CHARACTERS = 5
# Every placeholder this project has published (settings, docker-compose.yml, .env.example):
# installs that copied one of them are refused, whatever its length.
PUBLIC_PLACEHOLDERS = frozenset({
    "dev-only-insecure-secret-key-change-me-in-production",
    "change-me-in-production",
    "change-me-to-a-long-random-string",
    "build-only",
})


def weakness(key: str) -> str | None:
    """Why ``key`` is unfit outside DEBUG, or None."""
    if key in PUBLIC_PLACEHOLDERS or key.startswith("django-insecure-"):
        return "it is a placeholder published with the project"
    if len(key) < MIN_LENGTH:
        return f"it is {len(key)} characters long (at least {MIN_LENGTH} are required)"
    if len(set(key)) < MIN_UNIQUE_CHARACTERS:
        return f"it has fewer than {MIN_UNIQUE_CHARACTERS} distinct characters"
    return None


def generated_key(path: Path) -> str:
    """The key stored at ``path``, created (random, 0600) by the first process that needs it.

    The file appears complete or not at all (written aside, then hard-linked into place), so
    processes starting together all read the same key.
    """
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(64) + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process won the race: its key is the install's key
    finally:
        temporary.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    key = path.read_text().strip()
    if weakness(key):
        raise ImproperlyConfigured(f"{path} holds an unusable SECRET_KEY; delete it to generate a new one.")
    return key


def resolve(configured: str, *, debug: bool, generated_path: Path) -> str:
    """SECRET_KEY for these settings; raises ImproperlyConfigured when it must not run."""
    if not configured:
        try:
            return generated_key(generated_path)
        except OSError as exc:
            raise ImproperlyConfigured(
                f"SECRET_KEY is not set and {generated_path} cannot be written ({exc}); set SECRET_KEY "
                "to a random string of at least 50 characters."
            ) from exc
    reason = weakness(configured)
    if reason and not debug:
        raise ImproperlyConfigured(
            f"SECRET_KEY is unsafe: {reason}. Set SECRET_KEY to a random string of at least "
            f"{MIN_LENGTH} characters, e.g. python -c \"import secrets; print(secrets.token_urlsafe(64))\" "
            "(or unset it to have one generated in var/secret-key), or set DEBUG=true for development."
        )
    return configured
