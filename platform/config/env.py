"""Typed readers for the environment variables that drive settings.

One place parses strings into bools, ints, lists and database URLs (those through dj-database-url), so a
typo in production fails loudly at start-up with the variable's name instead of surfacing later as a confusing
Django error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dj_database_url

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_SUPPORTED_ENGINES = {"django.db.backends.postgresql", "django.db.backends.sqlite3"}


class EnvError(ValueError):
    """A variable is set to something its reader cannot parse (or a required one is missing)."""


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise EnvError(f"{name}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise EnvError(f"{name}={raw!r} is not an integer") from None


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    """A comma-separated list; blanks are dropped so `a, b,` gives ['a', 'b']."""
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_secret(name: str, default: str | None = None) -> str | None:
    """Read NAME, or the contents of the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise EnvError(f"{name}_FILE={file_name!r} cannot be read: {exc}") from None
    return os.environ.get(name, default)


def parse_database_url(url: str) -> dict[str, Any]:
    """A DATABASES entry from `postgres://user:pass@host:port/name?opt=v` or `sqlite:////abs/path`.

    dj-database-url does the parsing; this only refuses what the portal does not run on (other engines, a URL
    without a database name, SQLite in memory) with the variable's name in the message.
    """
    try:
        parsed = dict(dj_database_url.parse(url))
    except ValueError as exc:
        raise EnvError(f"DATABASE_URL cannot be parsed: {exc}") from None
    engine = parsed.get("ENGINE", "")
    if engine not in _SUPPORTED_ENGINES:
        raise EnvError(f"DATABASE_URL engine {engine!r} is not supported (use postgres:// or sqlite:///)")
    if parsed.get("NAME") in {"", None, ":memory:"}:
        raise EnvError("DATABASE_URL needs a database name (a file path for SQLite)")
    parsed["PORT"] = str(parsed.get("PORT") or "")
    return parsed


def database_url(settings_dict: dict[str, Any]) -> str:
    """The inverse of parse_database_url, used to hand a (test) database to a worker process."""
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    if engine.endswith("postgresql"):
        auth = quote(settings_dict.get("USER") or "", safe="")
        if settings_dict.get("PASSWORD"):
            auth += ":" + quote(settings_dict["PASSWORD"], safe="")
        host = settings_dict.get("HOST") or ""
        port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
        at = "@" if auth else ""
        return f"postgres://{auth}{at}{host}{port}/{settings_dict['NAME']}"
    raise EnvError(f"cannot express engine {engine!r} as a DATABASE_URL")
