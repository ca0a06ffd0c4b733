"""The production stack description: compose parses, and everything it runs exists in the repository.

There is no Docker engine here, so this checks the files statically: each service's command refers to
real files, Python modules and attributes, Celery apps and manage.py commands.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import get_commands

REPO_DIR = Path(__file__).resolve().parents[3]
DOCKER_DIR = REPO_DIR / "docker"
COMPOSE = yaml.safe_load((DOCKER_DIR / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
APP_DIR = "/app"  # where the Dockerfile puts the repository


def command_words(command: str | list[str]) -> list[str]:
    """Flatten a compose command (list form, or `sh -c "..."`) into the words that will run."""
    words = shlex.split(command) if isinstance(command, str) else list(command)
    if words[:2] == ["sh", "-c"]:
        return [w for part in words[2:] for w in shlex.split(part) if w not in {"&&", "exec"}]
    return words


def repo_path(container_path: str) -> Path:
    return REPO_DIR / Path(container_path).relative_to(APP_DIR)


def assert_python_target(target: str) -> None:
    """`package.module:attribute` must name a module file under platform/ that defines the attribute."""
    module, attribute = target.split(":")
    source = REPO_DIR / "platform" / (module.replace(".", "/") + ".py")
    assert source.is_file(), f"{target}: no {source}"
    assert re.search(rf"^{attribute}\s*[:=]", source.read_text(), re.MULTILINE), f"{target}: no {attribute}"


def assert_words_exist(words: list[str]) -> None:
    for i, word in enumerate(words):
        if word.endswith(".py"):
            assert (REPO_DIR / word).is_file(), f"{word} does not exist"
        if word == "manage.py":
            assert words[i + 1] in get_commands(), f"manage.py has no command {words[i + 1]!r}"
        if re.fullmatch(r"[a-z_]+(\.[a-z_]+)+:[A-Za-z_]\w*", word):
            assert_python_target(word)
        if word == "-m" and words[i - 1] == "python":  # a module of the portal, run as `python -m`
            assert (REPO_DIR / "platform" / (words[i + 1].replace(".", "/") + ".py")).is_file()
        if word == "-A":
            assert (REPO_DIR / "platform" / words[i + 1] / "celery.py").is_file()
        if word == "--workdir":
            assert repo_path(words[i + 1]).is_dir()


def test_compose_parses_and_has_the_production_services() -> None:
    assert set(SERVICES) == {"postgres", "redis", "portal", "worker", "beat", "observer", "coturn"}
    for name, service in SERVICES.items():
        assert "healthcheck" in service, f"{name} has no health check"
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES


@pytest.mark.parametrize("name", ["portal", "worker", "beat", "observer"])
def test_portal_services_build_from_the_repo_and_run_real_things(name: str) -> None:
    service = SERVICES[name]
    build = service["build"]
    context = (DOCKER_DIR / build["context"]).resolve()
    assert context == REPO_DIR
    assert (context / build["dockerfile"]).is_file()
    assert service["environment"]["DATABASE_URL"].startswith("postgres://")
    assert service["environment"]["REDIS_URL"].startswith("redis://")
    assert_words_exist(command_words(service["command"]))
    health = service["healthcheck"]["test"]
    assert_words_exist(command_words(health[1] if health[0] == "CMD-SHELL" else health[1:]))


def test_the_portal_command_serves_the_asgi_application() -> None:
    # Daphne, started through live.serve so that it runs on uvloop (see platform/live/serve.py).
    words = command_words(SERVICES["portal"]["command"])
    assert "live.serve" in words and "config.asgi:application" in words and "migrate" in words
    assert SERVICES["portal"]["environment"]["DB_POOL_MAX_SIZE"].startswith("${DB_POOL_MAX_SIZE:-")


def test_dockerfile_copies_only_what_exists() -> None:
    dockerfile = (DOCKER_DIR / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        for source in words[1:-1]:
            assert (REPO_DIR / source).exists(), f"Dockerfile copies missing {source}"
    assert_python_target(re.search(r'"(config\.asgi:application)"', dockerfile).group(1))
    assert "PYTHONPATH=/app/platform" in dockerfile
