"""A volunteer at home joins from the Join page (issue 14): the portal (Daphne, its observer, SQLite) runs on
the network lab's public segment with STUN/TURN configured, the volunteer's computer sits behind a home
router. The volunteer's browser asks the Join page for the command; the command runs as shown (its check
step verbatim, the wheel installed from the portal, `node-agent join <portal> <code>` with no other option);
the node comes online in the project's node list (heartbeats, and the observer sees its experts in the DHT
through the lab), and it received a TURN credential that coturn accepts, while one past its expiry is refused.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.portal.ice import issue_turn_grant, parse_turn_grant
from tests.netlab import NetLab, skip_unless_lab
from tests.netlab.agents import start_bootstraps
from tests.netlab.lab import REPO_DIR, Host
from tests.netlab.tools import turn_allocate
from tests.processes import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

PASSWORD = "a-Strong-passphrase-42"
SECRET = "lab-turn-secret"
SETUP = """
import django, sys
django.setup()
from accounts.models import Role, User
from projects import services
from swarm.models import ProjectSwarm
password, peers = sys.argv[1], sys.argv[2].split(",")
researcher = User.objects.create_user("res@example.org", password, display_name="Res", role=Role.RESEARCHER)
User.objects.create_user("vol@example.org", password, display_name="Vol", role=Role.VOLUNTEER)
project = services.project_create(
    owner=researcher, title="Lab digits", expert_architecture="ffn", hidden_size=32, grid_shape="4x4",
    optimizer="adam", learning_rate=1e-3, dataset="digits", join_policy="open", launch=True,
)
ProjectSwarm.objects.create(project=project, bootstrap_peers=peers)
print(project.slug)
"""


@pytest.fixture
def lab() -> Iterator[NetLab]:
    skip_unless_lab(coturn=True)
    with NetLab() as built:
        yield built


def browse(host: Host, *args: str) -> str:
    command = [sys.executable, "-m", "tests.netlab.portal_browser", *args]
    return host.run(command, timeout=60).stdout.strip()


def test_a_home_volunteer_joins_from_the_join_page_comes_online_and_gets_turn(
    lab: NetLab, tmp_path: Path
) -> None:
    from swarm.wheel import build_agent_wheel

    turn = lab.start_coturn(SECRET)
    peers = start_bootstraps([lab.public_host("boot1"), lab.public_host("boot2")], lab.workdir)
    portal = lab.public_host("portal")
    url = f"http://{portal.address}:8000"
    wheel = build_agent_wheel(out_dir=tmp_path / "wheels")
    clean = {
        k: v for k, v in lab.env().items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")
    }
    env = clean | {
        "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "1", "VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'portal.sqlite3'}", "ALLOWED_HOSTS": portal.address,
        "PORTAL_PUBLIC_URL": url, "AGENT_WHEEL_DIR": str(tmp_path / "wheels"), "PYTHONUNBUFFERED": "1",
        "SWARM_HEARTBEAT_INTERVAL_S": "2", "SWARM_ONLINE_WITHIN_S": "8", "SWARM_OBSERVE_INTERVAL_S": "2",
        "COLEARN_STUN_URLS": turn.stun_url, "COLEARN_TURN_URLS": turn.turn_url, "COLEARN_TURN_SECRET": SECRET,
        "COLEARN_TURN_TTL_S": "600",
    }  # fmt: skip
    portal.run([sys.executable, "manage.py", "migrate", "--noinput"], env=env, cwd=REPO_DIR, timeout=180)
    slug = portal.run(
        [sys.executable, "-c", SETUP, PASSWORD, ",".join(peers)], env=env, cwd=REPO_DIR / "platform"
    )
    slug_text = slug.stdout.strip().splitlines()[-1]
    with (lab.workdir / "daphne.log").open("wb") as log:
        daphne = [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            portal.address,
            "-p",
            "8000",
            "config.asgi:application",
        ]
        portal.popen(daphne, env=env, cwd=REPO_DIR / "platform", stdout=log, stderr=subprocess.STDOUT)
    with (lab.workdir / "observer.log").open("wb") as log:
        observer = [sys.executable, "manage.py", "observe_swarm", "--interval", "2", "--listen", "0.0.0.0:0"]
        portal.popen(observer, env=env, cwd=REPO_DIR, stdout=log, stderr=subprocess.STDOUT)
    home = lab.home_network("home", nat="cone")
    pc = home.host("pc")

    def portal_up() -> bool:
        return pc.run([sys.executable, "-m", "tests.netlab.portal_browser", "get", f"{url}/healthz"],
                      check=False, timeout=30).returncode == 0  # fmt: skip

    wait_until(portal_up, timeout=60, interval=0.5, what="the portal answers on the lab's public segment")

    command = browse(pc, "join-command", url, "vol@example.org", PASSWORD, slug_text)
    match = re.fullmatch(
        r"(python3 -c \"[^\"]+\" \S+ \S+) && python3 -m venv colearn-agent && "
        r"colearn-agent/bin/pip install --extra-index-url (\S+) (\S+) && "
        r"colearn-agent/bin/node-agent join (\S+) (\S+)",
        command,
    )
    assert match, command
    check_step, _torch_index, wheel_url, portal_arg, code = match.groups()
    assert portal_arg == url and wheel_url == f"{url}/agent/{wheel.filename}"
    checked = pc.run(["bash", "-c", check_step], check=False, env={"PATH": "/usr/bin:/bin"})
    assert checked.returncode == 0 and "join code OK" in checked.stdout, checked
    # The venv borrows the heavy dependencies (no Internet in the lab); the agent comes from the portal.
    home_dir = tmp_path / "volunteer"
    home_dir.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(home_dir / "colearn-agent")], check=True, timeout=120)
    venv_site = next((home_dir / "colearn-agent" / "lib").glob("python*/site-packages"))
    (venv_site / "colearn-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    volunteer_env = {"PATH": "/usr/bin:/bin", "HOME": str(home_dir), "PYTHONUNBUFFERED": "1"}
    pc.run([str(home_dir / "colearn-agent/bin/pip"), "install", "--no-deps", "--no-index", "-q", wheel_url],
           env=volunteer_env, cwd=home_dir, timeout=180)  # fmt: skip
    with (lab.workdir / "agent.log").open("wb") as log:
        agent = pc.popen(["colearn-agent/bin/node-agent", "join", portal_arg, code], env=volunteer_env,
                         cwd=home_dir, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def online() -> dict | None:
        assert agent.poll() is None, (lab.workdir / "agent.log").read_text()
        nodes = json.loads(browse(pc, "get", f"{url}/api/v1/projects/{slug_text}/nodes"))["nodes"]
        ready = [n for n in nodes if n["state"] == "online" and n["announced_experts"]]
        return ready[0] if ready else None

    try:
        node = wait_until(
            online, timeout=120, interval=1, what="the node online with its experts seen in the DHT"
        )
    except TimeoutError as exc:
        logs = "\n".join(f"--- {n}\n{(lab.workdir / n).read_text(errors='replace')[-2500:]}"
                         for n in ("agent.log", "observer.log", "daphne.log"))  # fmt: skip
        raise AssertionError(f"{exc}\n{logs}") from None
    said = (lab.workdir / "agent.log").read_text()
    assert "TURN credential valid until" in said, said
    state = json.loads(next(home_dir.glob(".local/share/colearn/agent.json")).read_text())
    grant = parse_turn_grant(state["turn"])
    assert grant is not None and grant.username.endswith(f":{node['node_id']}")

    relayed = turn_allocate(pc, turn.address, turn.port, grant.username, grant.credential)
    expired = issue_turn_grant(SECRET, node["node_id"], now=time.time() - 700, ttl=600)
    refused = turn_allocate(pc, turn.address, turn.port, expired.username, expired.credential)

    assert relayed["relayed"][0] == turn.address
    assert refused["error"][0] == 401
