"""The Join page's command: CPU-only PyTorch by default (the CUDA build a marked option), and the one-time
code checked with the portal before anything is installed. Real views, URL map and database."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from node_agent.identity import Identity
from projects.models import Project
from swarm.models import JoinCode
from swarm.openapi import JOIN_CHECK_REPLY
from swarm.views import TORCH_CPU_INDEX

pytestmark = pytest.mark.django_db
CHECK = "/api/v1/agent/join-check"
CHECK_URL = f"http://testserver{CHECK}"
AGENT = {"agent_version": "0.1.0", "platform": "Linux"}


def check(code: str | bytes, address: str = "127.0.0.1") -> Any:
    """POST `code` to the check; every 200 answer must match its documented schema."""
    body = code.encode() if isinstance(code, str) else code
    response = Client().post(CHECK, data=body, content_type="text/plain", REMOTE_ADDR=address)
    if response.status_code == 200:
        Draft202012Validator(JOIN_CHECK_REPLY).validate(response.json())
    return response


def shown(text: str, marker: str) -> str:
    return html.unescape(re.search(rf'<pre class="command"[^>]* {marker}>([^<]+)</pre>', text).group(1))


def test_the_join_command_checks_the_code_first_and_installs_cpu_torch_unless_asked(
    logged_in: Any, volunteer: Any, project: Project, wheel_settings: Any
) -> None:
    page = logged_in(volunteer).post(f"/projects/{project.slug}/join/").content.decode()
    code = JoinCode.objects.get()
    wheel = next(wheel_settings.glob("*.whl")).name
    cpu, gpu = shown(page, "data-join-command"), shown(page, "data-join-command-gpu")
    code_text = cpu.rsplit(" ", 1)[1]
    for command in (cpu, gpu):
        check_step, install, join = (
            command.split(" && ", 2)[0],
            command.split(" && ")[2],
            command.split(" && ")[3],
        )
        assert check_step.startswith('python3 -c "') and check_step.endswith(f" {CHECK_URL} {code_text}")
        assert install.startswith("colearn-agent/bin/pip install ") and install.endswith(f"/agent/{wheel}")
        assert join == f"colearn-agent/bin/node-agent join http://testserver {code_text}"
    assert f"--extra-index-url {TORCH_CPU_INDEX} " in cpu and "--extra-index-url" not in gpu
    assert "data-join-gpu" in page and "NVIDIA GPU" in page  # the CUDA build is a marked option
    assert (
        "before installing anything" in page
        and "node-agent join http://testserver</code> without a code" in page
    )
    windows = html.unescape(page).split('data-os="windows"')[1]
    assert "py -c " in windows and "if ($?) { py -m venv colearn-agent }" in windows
    assert code.code_hash  # the page's code is the stored one
    assert check(code_text).json()["ok"] is True


def test_a_usable_code_is_ok_and_stays_valid_through_a_slow_install(
    join_code: Any, project: Project, settings: Any
) -> None:
    code = join_code(project)
    before = JoinCode.objects.get().expires_at
    answer = check(f"  {code.lower()}\n")  # as typed or pasted
    assert answer.status_code == 200 and answer.json()["ok"] is True
    assert answer.json()["project"] == project.slug and "installing" in answer.json()["detail"]
    row = JoinCode.objects.get()
    grace = settings.SWARM["JOIN_CODE_INSTALL_GRACE"]
    assert row.expires_at > before and row.expires_at - timezone.now() > timedelta(seconds=grace - 60)
    assert row.used_at is None  # a check never uses the code up
    # Checking again and again never keeps a code alive past its first expiry plus the grace.
    limit = row.created_at + timedelta(seconds=settings.SWARM["JOIN_CODE_TTL"] + grace)
    for _ in range(3):
        check(code)
    assert JoinCode.objects.get().expires_at <= limit


def test_a_used_expired_or_unknown_code_is_refused_before_any_install(
    join_code: Any, project: Project, signed_post: Any, wheel_settings: Any
) -> None:
    used = join_code(project)
    assert signed_post("/api/v1/agent/join", Identity.generate(), {"code": used, **AGENT}).status_code == 201
    answer = check(used).json()
    assert answer["ok"] is False and answer["error"] == "code_used"
    assert "run `node-agent join http://testserver` without a code" in answer["detail"]

    expired = join_code(project)
    JoinCode.objects.filter(used_at__isnull=True).update(expires_at=timezone.now() - timedelta(seconds=1))
    answer = check(expired).json()
    assert answer == {"ok": False, "error": "code_expired", "detail": answer["detail"]}
    assert JoinCode.objects.get(used_at__isnull=True).expires_at < timezone.now()  # not revived

    assert check("0000-0000-0000").json()["error"] == "invalid_code"
    assert check("x" * 65).json()["error"] == "too_large"


def test_join_checks_count_against_the_join_attempts_per_address(
    join_code: Any, project: Project, settings: Any
) -> None:
    settings.SWARM = {**settings.SWARM, "RATE_JOIN_PER_IP": 3}
    code = join_code(project)
    assert [check(code, "10.0.0.7").status_code for _ in range(3)] == [200] * 3
    refused = check(code, "10.0.0.7")
    assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
    assert check(code, "10.0.0.8").status_code == 200


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200))
def test_any_body_gets_a_clear_answer_never_a_500(body: bytes, project: Project) -> None:
    response = Client().post(
        CHECK, data=body, content_type="application/octet-stream", REMOTE_ADDR="10.9.9.9"
    )
    assert response.status_code in (200, 429), response.content
    answer = response.json()
    assert answer.get("ok") is False or answer.get("error") == "rate_limited"
    assert not JoinCode.objects.filter(used_at__isnull=False).exists()
