"""`manage.py demo_swarm`: next to a running portal, start small local swarms that join the demo projects
(digits, and the small language model) through the real join flow (join codes, the wheel from the portal,
credentials), plus each project's trainer.

For each project it starts a bootstrap node and makes it the project's bootstrap peer; it installs the agent
wheel over HTTP from the portal into var/demo-agent/venv (dependencies borrowed from this interpreter
through a .pth file, so torch is not downloaded again), then runs `node-agent join` for each agent and
`node-agent train --portal ... --join-code ...` (the trainer reads the project's config: a classifier or a
language model), plus the swarm observer. Ctrl-C stops them all. Logs: var/demo-agent/logs/.
The defaults keep a 2-core laptop usable: 3 small digits agents, 2 agents of the language model (8 experts
of width 64 in all) and two light trainers.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.models import User
from core.management.commands.seed_demo import DEMO_LM_PROJECT_SLUG, DEMO_PROJECT_SLUG, DEMO_VOLUNTEER
from projects.models import Project
from swarm.models import CodePurpose, ProjectSwarm
from swarm.services import join_code_create
from swarm.wheel import build_agent_wheel

PEER_LINE = re.compile(r"^(\S+:\d+/[0-9a-f]{40})$", re.M)


class Command(BaseCommand):
    help = "Start a local demo swarm (bootstrap, agents via `node-agent join`, a trainer, the observer)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--portal-url", default="http://127.0.0.1:8000", help="the running portal")
        parser.add_argument("--agents", type=int, default=3, help="digits agents serving experts (default 3)")
        parser.add_argument("--experts", type=int, default=6, help="experts per digits agent (default 6)")
        parser.add_argument(
            "--lm-agents", type=int, default=2, help="language-model agents (default 2; 0: no LM swarm)"
        )
        parser.add_argument("--lm-experts", type=int, default=4, help="experts per LM agent (default 4)")
        parser.add_argument("--steps", type=int, default=100_000, help="trainer steps (default: run on)")
        parser.add_argument("--no-trainer", action="store_true")
        parser.add_argument("--no-observer", action="store_true", help="the observer runs elsewhere")
        parser.add_argument("--dir", default=str(settings.VAR_DIR / "demo-agent"))

    def handle(self, *args: Any, **options: Any) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.base = Path(options["dir"])
        self.logs = self.base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        url = options["portal_url"].rstrip("/")
        stop = {"now": False}
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.update(now=True))
        try:
            self._start(url, options)
            slugs = [DEMO_PROJECT_SLUG] + ([DEMO_LM_PROJECT_SLUG] if options["lm_agents"] else [])
            pages = " and ".join(f"{url}/projects/{slug}/swarm/" for slug in slugs)
            self.stdout.write(self.style.SUCCESS(f"demo swarms running; open {pages}"))
            self.stdout.write(f"logs in {self.logs}; Ctrl-C stops everything")
            while not stop["now"]:
                for name, process in self.children:
                    if process.poll() is not None and not name.endswith("trainer"):
                        self.stderr.write(
                            f"{name} exited with {process.returncode}; see {self.logs / name}.log"
                        )
                        stop["now"] = True
                time.sleep(1)
        finally:
            self._stop_all()

    def _start(self, url: str, options: dict[str, Any]) -> None:
        call_command("seed_demo", stdout=self.stdout)
        wheel = build_agent_wheel()  # always fresh: the demo must run the code of this checkout
        self._wait_for_portal(url)
        agent = self._install_agent(f"{url}/agent/{wheel.filename}")
        if not options["no_observer"]:
            self._spawn("observer", [sys.executable, str(settings.REPO_DIR / "manage.py"), "observe_swarm",
                                     "--listen", "127.0.0.1:0"])  # fmt: skip
        swarms = [("", DEMO_PROJECT_SLUG, options["agents"], options["experts"])]
        if options["lm_agents"]:
            swarms.append(("lm-", DEMO_LM_PROJECT_SLUG, options["lm_agents"], options["lm_experts"]))
        for name, slug, agents, experts in swarms:
            self._start_swarm(url, agent, Project.objects.get(slug=slug), name, agents, experts)
        if not options["no_trainer"]:
            time.sleep(5)  # let the servers announce before the trainers' first beam search
            for name, slug, _, _ in swarms:
                self._start_trainer(url, agent, Project.objects.get(slug=slug), name, options["steps"])

    def _start_swarm(
        self, url: str, agent: str, project: Project, name: str, agents: int, experts: int
    ) -> None:
        """A bootstrap node made `project`'s bootstrap peer, and `agents` volunteers' agents joining it."""
        boot_command = [
            sys.executable,
            "-m",
            "node_agent",
            "bootstrap",
            "--listen",
            "127.0.0.1:0",
            "--ephemeral",
            "--portal",  # so the bootstrap checks records as the project's nodes do
            url,
            "--project",
            project.slug,
        ]
        boot = self._spawn(f"{name}bootstrap", boot_command)
        peer = self._wait_for_line(boot, f"{name}bootstrap")
        ProjectSwarm.objects.update_or_create(project=project, defaults={"bootstrap_peers": [peer]})
        self.stdout.write(f"{project.slug}: bootstrap peer {peer}")
        volunteer = User.objects.get(email=DEMO_VOLUNTEER)
        for i in range(agents):
            code = join_code_create(project=project, user=volunteer, now=timezone.now())[1]
            command = [agent, "-v", "join", url, code, "--data-dir", str(self.base / f"{name}node-{i}")]
            command += ["--listen", "127.0.0.1:0", "--rtc-loopback-only", "--experts", str(experts)]
            self._spawn(f"{name}agent-{i}", [*command, "--heartbeat-period", "5", "--seed", str(i)])

    def _start_trainer(self, url: str, agent: str, project: Project, name: str, steps: int) -> None:
        """The researcher's own trainer, as the project's Train page makes it (no approval needed)."""
        train = CodePurpose.TRAIN
        code = join_code_create(project=project, user=project.owner, now=timezone.now(), purpose=train)[1]
        self._spawn(f"{name}trainer", [agent, "train", "--portal", url, "--join-code", code, "--data-dir",
                                       str(self.base / f"{name}trainer"), "--rtc-loopback-only", "--steps",
                                       str(steps), "--no-progress", "--heartbeat-period", "5",
                                       "--log-every", "5"])  # fmt: skip

    def _wait_for_portal(self, url: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=3)
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"the portal at {url} does not answer ({exc}); start it first"
                    ) from None
                time.sleep(1)

    def _install_agent(self, wheel_url: str) -> str:
        """var/demo-agent/venv with the agent from the portal (dependencies via a .pth, see above)."""
        venv = self.base / "venv"
        python = venv / "bin" / "python"
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        purelib = subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
        (Path(purelib) / "colearn-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel_url],
            check=True,
            timeout=300,
            cwd=self.base,
        )
        self.stdout.write(f"installed the agent from {wheel_url} into {venv}")
        return str(venv / "bin" / "node-agent")

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.base)
        self.children.append((name, process))
        self.stdout.write(f"started {name} (pid {process.pid})")
        return process

    def _wait_for_line(self, process: subprocess.Popen[bytes], name: str) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            found = PEER_LINE.search((self.logs / f"{name}.log").read_text())
            if found:
                return found.group(1)
            time.sleep(0.2)
        raise CommandError(f"{name} did not start; see {self.logs / name}.log")

    def _stop_all(self) -> None:
        for name, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(
                    signal.SIGINT
                    if name.removeprefix("lm-").startswith(("agent", "trainer"))
                    else signal.SIGTERM
                )
        for name, process in reversed(self.children):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            self.stdout.write(f"stopped {name}")
