"""The typed environment readers behind settings (pure: no Django setup needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.env import (
    EnvError,
    database_url,
    env_bool,
    env_int,
    env_list,
    env_secret,
    parse_database_url,
)


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False)]
)
def test_env_bool_parses_common_spellings(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("FLAG", raw)
    assert env_bool("FLAG") is expected


def test_env_bool_rejects_garbage_with_the_variable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAG", "maybe")
    with pytest.raises(EnvError, match="FLAG"):
        env_bool("FLAG")


def test_env_int_default_and_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COUNT", raising=False)
    assert env_int("COUNT", 7) == 7
    monkeypatch.setenv("COUNT", "12")
    assert env_int("COUNT", 7) == 12
    monkeypatch.setenv("COUNT", "twelve")
    with pytest.raises(EnvError, match="COUNT"):
        env_int("COUNT", 7)


def test_env_list_drops_blanks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTS", " a.example, b.example ,,")
    assert env_list("HOSTS") == ["a.example", "b.example"]


def test_env_secret_prefers_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    monkeypatch.setenv("TOKEN", "from-env")
    monkeypatch.setenv("TOKEN_FILE", str(secret_file))
    assert env_secret("TOKEN") == "from-file"
    monkeypatch.setenv("TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(EnvError, match="TOKEN_FILE"):
        env_secret("TOKEN")


def test_postgres_url_round_trips() -> None:
    parsed = parse_database_url("postgres://user:p%40ss@db.local:5433/colearn?sslmode=require")
    assert (
        parsed.items()
        >= {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "colearn",
            "USER": "user",
            "PASSWORD": "p@ss",
            "HOST": "db.local",
            "PORT": "5433",
            "OPTIONS": {"sslmode": "require"},
        }.items()
    )
    assert parse_database_url(database_url(parsed))["PASSWORD"] == "p@ss"


def test_sqlite_url_gives_an_absolute_path() -> None:
    assert parse_database_url("sqlite:////tmp/x.sqlite3")["NAME"] == "/tmp/x.sqlite3"
    assert (
        database_url({"ENGINE": "django.db.backends.sqlite3", "NAME": "/tmp/x.sqlite3"})
        == "sqlite:////tmp/x.sqlite3"
    )


@pytest.mark.parametrize("url", ["mysql://x/y", "postgres://host/", "sqlite:///"])
def test_unsupported_or_incomplete_urls_are_refused(url: str) -> None:
    with pytest.raises(EnvError):
        parse_database_url(url)
