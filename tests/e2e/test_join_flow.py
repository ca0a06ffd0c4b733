"""The volunteer's whole path, for real: a live portal over HTTP, a Join page, a wheel installed from the
portal into a fresh virtual environment, `node-agent join`, the observer reading the DHT, and the admin
health page showing the node online, then offline once the agent stops.

The fresh venv gets its third-party dependencies (torch, aiortc, ...) through a .pth file pointing at this
project's .venv site-packages, because installing torch from scratch would take minutes; the agent's own
code comes from the wheel downloaded from the portal (`pip install --no-deps <portal>/agent/<wheel>`),
which the test asserts by checking where `node_agent` is imported from.
"""

from __future__ import annotations

import html
import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import sysconfig
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from accounts.models import Role, User
from projects import services as project_services
from swarm.models import Node, NodeState, ProjectSwarm
from tests.processes import free_port, stop_process, wait_until

REPO_DIR = Path(__file__).resolve().parents[2]
PASSWORD = "a-Strong-passphrase-42"
FAST = {
    "SWARM_HEARTBEAT_INTERVAL_S": "2",
    "SWARM_ONLINE_WITHIN_S": "8",
    "SWARM_OFFLINE_AFTER_S": "12",
    "SWARM_OBSERVE_INTERVAL_S": "2",
}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(240),
]


def wait_for(what: str, check: Callable[[], object], timeout: float, logs: list[Path]) -> object:
    """`wait_until`, failing with the tails of the processes' logs."""
    try:
        return wait_until(check, timeout=timeout, interval=0.5, what=what)
    except TimeoutError as exc:
        tails = (f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
        raise AssertionError("\n".join([str(exc), *tails])) from None


class Processes:
    """Started subprocesses, stopped in reverse order at the end of the test (SIGTERM, then SIGKILL)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, name: str, command: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        self.logs.append(log)
        with log.open("wb") as handle:
            process = subprocess.Popen(command, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
        self.running.append(process)
        return process

    @staticmethod
    def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        stop_process(process, timeout=20, sig=sig)

    def stop_all(self) -> None:
        for process in reversed(self.running):
            self.stop(process)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def browser() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def log_in(opener: urllib.request.OpenerDirector, url: str, email: str) -> None:
    page = opener.open(f"{url}/accounts/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": email, "password": PASSWORD})
    opener.open(f"{url}/accounts/login/", data=form.encode(), timeout=10)


def portal_env() -> dict[str, str]:
    """What a portal subprocess needs to see this test's database and settings."""
    from django.db import connection

    from config.env import database_url

    return dict(os.environ) | {
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": database_url(connection.settings_dict),
        "PYTHONPATH": os.pathsep.join([str(REPO_DIR / "platform"), str(REPO_DIR)]),
    }


def start_bootstrap(processes: Processes, env: dict[str, str]) -> str:
    """A DHT bootstrap node; returns its `host:port/nodeid` once it prints it."""
    boot = processes.start(
        "bootstrap",
        [sys.executable, "-m", "node_agent", "bootstrap", "--listen", "127.0.0.1:0", "--ephemeral"],
        env,
        REPO_DIR,
    )
    boot_log = processes.logs[-1]
    announced_peer = re.compile(r"^(\S+:\d+/[0-9a-f]{40})$", re.M)
    peer = wait_for(
        "the bootstrap node", lambda: announced_peer.search(boot_log.read_text()), 30, processes.logs
    )
    assert boot.poll() is None
    return peer.group(1)


def start_portal(processes: Processes, env: dict[str, str]) -> str:
    """Daphne serving the portal on a free port; returns its URL once /healthz answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes.start(
        "daphne",
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        env,
        REPO_DIR / "platform",
    )

    def portal_up() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/healthz", timeout=2).status == 200
        except OSError:
            return False

    wait_for("the portal", portal_up, 60, processes.logs)
    return url


def agent_env() -> dict[str, str]:
    """An agent's environment: nothing of the portal's (it never imports Django)."""
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "DJANGO_SETTINGS_MODULE"}}


def test_volunteer_joins_from_the_join_page_and_appears_online(processes: Processes, tmp_path: Path) -> None:
    from swarm.wheel import build_agent_wheel

    researcher = User.objects.create_user(
        "res@example.org", PASSWORD, display_name="Res", role=Role.RESEARCHER
    )
    User.objects.create_user("vol@example.org", PASSWORD, display_name="Vol", role=Role.VOLUNTEER)
    User.objects.create_user(
        "boss@example.org", PASSWORD, display_name="Boss", is_staff=True, is_superuser=True
    )
    project = project_services.project_create(
        owner=researcher, title="E2E digits", expert_architecture="ffn", hidden_size=32, grid_shape="4x4",
        optimizer="adam", learning_rate=1e-3, dataset="digits", join_policy="open", launch=True,
    )  # fmt: skip
    wheel = build_agent_wheel(out_dir=tmp_path / "wheels")

    env = portal_env() | FAST | {
        "AGENT_WHEEL_DIR": str(tmp_path / "wheels"),
        "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    peer = start_bootstrap(processes, env)
    ProjectSwarm.objects.create(project=project, bootstrap_peers=[peer])
    url = start_portal(processes, env)
    processes.start(
        "observer",
        [sys.executable, "manage.py", "observe_swarm", "--interval", "2", "--listen", "127.0.0.1:0"],
        env,
        REPO_DIR,
    )

    # The volunteer opens the Join page, asks for a command (a POST: a plain GET creates no code) and
    # copies it.
    volunteer = browser()
    log_in(volunteer, url, "vol@example.org")
    offer = volunteer.open(f"{url}/projects/{project.slug}/join/", timeout=10).read().decode()
    assert "data-join-create" in offer and "data-join-command" not in offer
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', offer).group(1)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token}).encode()
    page = volunteer.open(f"{url}/projects/{project.slug}/join/", data=form, timeout=10).read().decode()
    command = html.unescape(
        re.search(r"<pre class=\"command\"[^>]* data-join-command>([^<]+)</pre>", page).group(1)
    )
    match = re.fullmatch(
        r"(python3 -c \"[^\"]+\" \S+ \S+) && python3 -m venv colearn-agent && "
        r"colearn-agent/bin/pip install --extra-index-url (\S+) (\S+) && "
        r"colearn-agent/bin/node-agent join (\S+) (\S+)",
        command,
    )
    assert match, command
    check_step, torch_index, wheel_url, portal_arg, code = match.groups()
    assert wheel_url == f"{url}/agent/{wheel.filename}" and portal_arg == url
    assert torch_index == "https://download.pytorch.org/whl/cpu"  # CPU-only PyTorch (not contacted here)

    # The command's first step, exactly as shown, asks the portal about the code before any install.
    checked = subprocess.run(["bash", "-c", check_step], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "join code OK" in checked.stdout, checked

    # A fresh virtual environment; dependencies borrowed from .venv, the agent itself from the portal.
    venv = tmp_path / "colearn-agent"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.check_output([python, "-c", purelib], text=True).strip())
    (site / "colearn-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--no-deps", "--no-index", "-q", wheel_url],
        check=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    where = subprocess.check_output(
        [python, "-c", "import node_agent; print(node_agent.__file__)"], cwd=tmp_path, text=True
    )
    assert Path(where.strip()).is_relative_to(venv), where

    agent_command = [str(venv / "bin" / "node-agent"), "-v", "join", portal_arg, code]
    # No same-machine options: the observer (on 127.0.0.1) reaches the node with the command's defaults, and
    # coverage below counts only cells whose `info` probe it answered.
    agent_command += ["--data-dir", str(tmp_path / "agent")]
    agent_command += [
        "--experts",
        "4",
        "--heartbeat-period",
        "2",
        "--announce-period",
        "2",
        "--announce-ttl",
        "20",
    ]
    agent = processes.start("agent", agent_command, agent_env(), tmp_path)

    def node_online_and_observed() -> Node | None:
        node = Node.objects.filter(project=project).first()
        if node and node.state == NodeState.ONLINE and node.announced_experts and node.samples >= 0:
            return node
        return None

    node = wait_for("the node online and seen in the DHT", node_online_and_observed, 120, processes.logs)
    assert agent.poll() is None
    assert set(node.announced_experts) <= set(node.experts) and len(node.experts) == 4
    swarm = ProjectSwarm.objects.get(project=project)
    assert sum(1 for n in swarm.coverage.values() if n) == 4 and swarm.observation_error == ""
    assert node.credentials.filter(revoked_at__isnull=True).exists()
    # A trainer on the same machine, without any same-machine option either, is served by the node (issue 13:
    # a node shown online that served 0 samples): its DHT node is on 127.0.0.1, the agent's on 0.0.0.0.
    trained = subprocess.run(
        [sys.executable, "-m", "node_agent", "train", "--initial-peers", peer, "--grid", "4x4",
         "--hidden-dim", "32", "--steps", "3", "--batch-size", "16", "--no-progress"],
        env=env, cwd=REPO_DIR, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    wait_for("the node's samples", lambda: Node.objects.get(pk=node.pk).samples > 0, 30, processes.logs)
    # The same command run again stops at its check, before installing, and says how to restart instead.
    again = subprocess.run(["bash", "-c", check_step], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and f"`node-agent join {url}` without a code" in again.stdout, again

    admin = browser()
    log_in(admin, url, "boss@example.org")
    health = admin.open(f"{url}/swarm/health/", timeout=10).read().decode()
    assert f'data-node-id="{node.node_id}" data-state="online"' in health

    # The volunteer stops the agent: its last heartbeat says "going offline" (and it withdraws its experts),
    # so the node is offline as soon as the agent has exited, not after the offline threshold.
    processes.stop(agent, signal.SIGINT)
    stopped = Node.objects.get(pk=node.pk)
    assert stopped.state == NodeState.OFFLINE, processes.logs[-1].read_text()
    assert stopped.state_reason == "stopped cleanly (going-offline heartbeat)"
    health = admin.open(f"{url}/swarm/health/", timeout=10).read().decode()
    assert f'data-node-id="{node.node_id}" data-state="offline"' in health
    # The observer's next rounds keep it offline although its last heartbeat is recent.
    observed = ProjectSwarm.objects.get(project=project).observed_at
    wait_for(
        "two more observer rounds",
        lambda: ProjectSwarm.objects.get(project=project).observed_at > observed + timedelta(seconds=2),
        30,
        processes.logs,
    )
    changes = list(Node.objects.get(pk=node.pk).state_changes.order_by("at").values_list("state", flat=True))
    assert changes[0] == "registered" and changes[-2:] == ["online", "offline"], changes
    assert Node.objects.get(pk=node.pk).state == NodeState.OFFLINE
