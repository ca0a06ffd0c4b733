"""Settings chosen from the environment, checked in fresh interpreters (settings are read once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[3]

PROBE = (
    "import json, django; from django.conf import settings; django.setup(); print(json.dumps({"
    "'db': settings.DATABASES['default']['ENGINE'], 'layer': settings.CHANNEL_LAYERS['default']['BACKEND'],"
    "'broker': settings.CELERY_BROKER_URL, 'debug': settings.DEBUG}))"
)


def run_portal_python(code: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY"}
    }
    clean |= {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "VAR_DIR": str(tmp_path / "var"),
        "PYTHONPATH": "platform",
    }
    clean.pop("COLEARN_TEST_RUN", None)
    clean.pop("CELERY_DATA_DIR", None)
    return subprocess.run(
        [sys.executable, *code], cwd=REPO_DIR, env=clean | env, capture_output=True, text=True, timeout=120
    )


def test_defaults_need_no_server(tmp_path: Path) -> None:
    result = run_portal_python(["-c", PROBE], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "db": "django.db.backends.sqlite3",
        "layer": "channels.layers.InMemoryChannelLayer",
        "broker": "filesystem://",
        "debug": True,
    }
    assert (tmp_path / "var" / "celery" / "queue").is_dir()


def test_database_and_redis_urls_select_the_production_backends(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgres://u:p@127.0.0.1:5432/colearn", "REDIS_URL": "redis://127.0.0.1:6379/3"}
    result = run_portal_python(["-c", PROBE], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "db": "django.db.backends.postgresql",
        "layer": "channels_redis.core.RedisChannelLayer",
        "broker": "redis://127.0.0.1:6379/3",
        "debug": True,
    }


def test_secret_key_is_required_without_debug(tmp_path: Path) -> None:
    result = run_portal_python(["manage.py", "check"], {"DEBUG": "0", "ALLOWED_HOSTS": "x.example"}, tmp_path)
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_check_deploy_is_clean_with_a_production_environment(tmp_path: Path) -> None:
    env = {
        "DEBUG": "0",
        "SECRET_KEY": "k3y-" + "x9Q#mZ2!pL7@vR4$wT8%" * 3,
        "ALLOWED_HOSTS": "colearn.example.org",
        "CSRF_TRUSTED_ORIGINS": "https://colearn.example.org",
    }
    result = run_portal_python(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_a_database_pool_replaces_persistent_connections_on_postgresql_only(tmp_path: Path) -> None:
    probe = (
        "import json, django; from django.conf import settings; django.setup(); "
        "db = settings.DATABASES['default']; "
        "print(json.dumps([db.get('OPTIONS', {}).get('pool'), db['CONN_MAX_AGE']]))"
    )
    postgres = {"DATABASE_URL": "postgres://u:p@127.0.0.1:5432/colearn", "DB_CONN_MAX_AGE": "60"}
    pooled = run_portal_python(["-c", probe], postgres | {"DB_POOL_MAX_SIZE": "8"}, tmp_path)
    assert pooled.returncode == 0, pooled.stderr
    assert json.loads(pooled.stdout.splitlines()[-1]) == [{"min_size": 1, "max_size": 8, "timeout": 10}, 0]
    unpooled = run_portal_python(["-c", probe], postgres, tmp_path)
    assert json.loads(unpooled.stdout.splitlines()[-1]) == [None, 60]
    sqlite = run_portal_python(["-c", probe], {"DB_POOL_MAX_SIZE": "8"}, tmp_path)
    assert json.loads(sqlite.stdout.splitlines()[-1]) == [None, 0]
