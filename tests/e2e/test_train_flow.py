"""The researcher's path, for real: a live portal over HTTP, the owner's Train page, and the exact
`node-agent train` command line it shows, run against a small swarm (a bootstrap node and the owner's own
expert server in an approval-gated project). The trainer waits for experts instead of failing, trains until
SIGTERM, shows offline at once, and a restart without a code (`--steps`) is a second run on the charts.

The install part of the command is exercised by test_join_flow.py (it is the same builder); here the agent
runs from this checkout, with test-only options (data directory, loopback, short periods) appended.
"""

from __future__ import annotations

import html
import re
import shlex
import signal
import sys
import urllib.parse
from pathlib import Path

import pytest
from django.utils import timezone

from accounts.models import Role, User
from projects import services as project_services
from swarm import services as swarm_services
from swarm.models import Node, NodeState, ProjectSwarm, TrainingMetric
from tests.e2e.test_join_flow import (
    FAST,
    PASSWORD,
    REPO_DIR,
    Processes,
    agent_env,
    browser,
    log_in,
    portal_env,
    processes,  # noqa: F401 - the fixture
    start_bootstrap,
    start_portal,
    wait_for,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(240),
]

#: Test-only options after the shown command: a data directory of its own, one machine, short periods.
TRAINER_TEST_OPTIONS = [
    "--rtc-loopback-only", "--wait-period", "1", "--heartbeat-period", "2", "--log-every", "2",
    "--eval-every", "0", "--no-progress", "--batch-size", "16", "--k-best", "2",
]  # fmt: skip


def trainer_metrics(node: Node) -> list[tuple[str, int]]:
    rows = TrainingMetric.objects.filter(node=node, kind="train").order_by("received_at", "step")
    return list(rows.values_list("run", "step"))


def test_the_owner_trains_from_the_train_page(processes: Processes, tmp_path: Path) -> None:  # noqa: F811
    from swarm.wheel import build_agent_wheel

    owner = User.objects.create_user("res@example.org", PASSWORD, display_name="Res", role=Role.RESEARCHER)
    project = project_services.project_create(
        owner=owner, title="Train digits", expert_architecture="ffn", hidden_size=32, grid_shape="2x2",
        optimizer="adam", learning_rate=1e-3, dataset="digits", join_policy="approval", launch=True,
    )  # fmt: skip
    build_agent_wheel(out_dir=tmp_path / "wheels")
    env = portal_env() | FAST | {"AGENT_WHEEL_DIR": str(tmp_path / "wheels"), "PYTHONUNBUFFERED": "1"}
    ProjectSwarm.objects.create(project=project, bootstrap_peers=[start_bootstrap(processes, env)])
    url = start_portal(processes, env)

    # The owner opens the project, follows its Train link and asks for a command (a POST).
    researcher = browser()
    log_in(researcher, url, owner.email)
    detail = researcher.open(f"{url}/projects/{project.slug}/", timeout=10).read().decode()
    assert f'href="/projects/{project.slug}/train/" data-train-button' in detail
    offer = researcher.open(f"{url}/projects/{project.slug}/train/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', offer).group(1)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token}).encode()
    page = researcher.open(f"{url}/projects/{project.slug}/train/", data=form, timeout=10).read().decode()
    command = html.unescape(
        re.search(r'<pre class="command"[^>]* data-join-command>([^<]+)</pre>', page).group(1)
    )
    shown = command.split(" && ")[-1]
    match = re.fullmatch(r"colearn-agent/bin/node-agent (train --portal (\S+) --join-code (\S+))", shown)
    assert match and match.group(2) == url, command

    # The shown command line, started before any expert serves: it waits (saying so) instead of failing.
    trainer_dir = ["--data-dir", str(tmp_path / "trainer")]
    trainer_command = [sys.executable, "-m", "node_agent", *shlex.split(match.group(1))]
    trainer = processes.start("trainer", [*trainer_command, *trainer_dir, *TRAINER_TEST_OPTIONS], agent_env(),
                              REPO_DIR)  # fmt: skip
    trainer_log = processes.logs[-1]
    waiting = "waiting for experts to come online"
    wait_for(
        "the trainer waiting for experts", lambda: waiting in trainer_log.read_text(), 90, processes.logs
    )
    node = Node.objects.get(project=project, user=owner)
    assert node.state != NodeState.PENDING, "the owner's own trainer needs no approval"

    # The owner also lends a computer to the project (the owner's node: no approval either).
    code = swarm_services.join_code_create(project=project, user=owner, now=timezone.now())[1]
    server = [sys.executable, "-m", "node_agent", "join", url, code, "--data-dir", str(tmp_path / "server")]
    server += ["--listen", "127.0.0.1:0", "--rtc-loopback-only", "--experts", "4", "--heartbeat-period", "2"]
    processes.start("server", server, agent_env(), REPO_DIR)
    first = wait_for(
        "the trainer's metrics",
        lambda: len(trainer_metrics(node)) >= 2 and trainer_metrics(node),
        120,
        processes.logs,
    )
    assert Node.objects.get(pk=node.pk).role == "trainer"

    # SIGTERM: a clean stop; the going-offline heartbeat shows the trainer offline at once.
    processes.stop(trainer, signal.SIGTERM)
    assert trainer.returncode == 0, trainer_log.read_text()[-3000:]
    stopped = Node.objects.get(pk=node.pk)
    assert stopped.state == NodeState.OFFLINE and stopped.state_reason.startswith("stopped cleanly")
    runs = {run for run, _ in trainer_metrics(node)}
    assert len(runs) == 1 and len(first[0][0]) == 16

    # Restarted without a code (the saved credential), for a few steps: a second run, counting from the start.
    again = [
        *trainer_command[:3],
        "train",
        "--portal",
        url,
        *trainer_dir,
        *TRAINER_TEST_OPTIONS,
        "--steps",
        "40",
    ]
    restarted = processes.start("trainer-again", again, agent_env(), REPO_DIR)
    assert restarted.wait(timeout=120) == 0, processes.logs[-1].read_text()[-3000:]
    # Metrics go out with the heartbeats while it trains, and a last flush of at most 3 s at the end (the
    # portal is never on the training path): on a loaded machine that flush may miss the last points.
    second = [(run, step) for run, step in trainer_metrics(node) if run not in runs]
    steps = [step for _, step in second]
    assert steps[:1] == [2] and steps == sorted(set(steps)) and steps[-1] <= 40, steps
    assert len({run for run, _ in second}) == 1
    swarm_page = researcher.open(f"{url}/projects/{project.slug}/swarm/", timeout=10).read().decode()
    assert swarm_page.count('class="line-loss" data-run-line') == 2, "a line per run"
