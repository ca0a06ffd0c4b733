"""`manage.py demo_swarm`: next to a running portal, start a small local swarm that joins the demo project
through the real join flow (join codes, the wheel from the portal, credentials), plus a trainer.

It starts a bootstrap node, makes it the demo project's bootstrap peer, installs the agent wheel over HTTP
from the portal into var/demo-agent/venv (dependencies borrowed from this interpreter through a .pth file,
so torch is not downloaded again), then runs `node-agent join` for each agent and `node-agent train
--portal ... --join-code ...`, plus the swarm observer. Ctrl-C stops them all. Logs: var/demo-agent/logs/.
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
from core.management.commands.seed_demo import DEMO_PROJECT_SLUG, DEMO_VOLUNTEER
from projects.models import Project
from swarm.models import CodePurpose, ProjectSwarm
from swarm.services import join_code_create
from swarm.wheel import build_agent_wheel

PEER_LINE = re.compile(r"^(\S+:\d+/[0-9a-f]{40})$", re.M)


class Command(BaseCommand):
    help = "Start a local demo swarm (bootstrap, agents via `node-agent join`, a trainer, the observer)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--portal-url", default="http://127.0.0.1:8000", help="the running portal")
        parser.add_argument("--agents", type=int, default=3, help="expert-serving agents (default 3)")
        parser.add_argument("--experts", type=int, default=6, help="experts per agent (default 6)")
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
            self.stdout.write(
                self.style.SUCCESS(f"demo swarm running; open {url}/projects/{DEMO_PROJECT_SLUG}/swarm/")
            )
            self.stdout.write(f"logs in {self.logs}; Ctrl-C stops everything")
            while not stop["now"]:
                for name, process in self.children:
                    if process.poll() is not None and name != "trainer":
                        self.stderr.write(
                            f"{name} exited with {process.returncode}; see {self.logs / name}.log"
                        )
                        stop["now"] = True
                time.sleep(1)
        finally:
            self._stop_all()

    def _start(self, url: str, options: dict[str, Any]) -> None:
        call_command("seed_demo", stdout=self.stdout)
        project = Project.objects.get(slug=DEMO_PROJECT_SLUG)
        volunteer = User.objects.get(email=DEMO_VOLUNTEER)
        wheel = build_agent_wheel()  # always fresh: the demo must run the code of this checkout
        self._wait_for_portal(url)
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
        boot = self._spawn("bootstrap", boot_command)
        peer = self._wait_for_line(boot, "bootstrap")
        ProjectSwarm.objects.update_or_create(project=project, defaults={"bootstrap_peers": [peer]})
        self.stdout.write(f"bootstrap peer {peer}")
        agent = self._install_agent(f"{url}/agent/{wheel.filename}")
        if not options["no_observer"]:
            self._spawn("observer", [sys.executable, str(settings.REPO_DIR / "manage.py"), "observe_swarm",
                                     "--listen", "127.0.0.1:0"])  # fmt: skip
        for i in range(options["agents"]):
            code = join_code_create(project=project, user=volunteer, now=timezone.now())[1]
            command = [agent, "-v", "join", url, code, "--data-dir", str(self.base / f"node-{i}")]
            command += [
                "--listen",
                "127.0.0.1:0",
                "--rtc-loopback-only",
                "--experts",
                str(options["experts"]),
            ]
            self._spawn(f"agent-{i}", [*command, "--heartbeat-period", "5", "--seed", str(i)])
        if not options["no_trainer"]:
            time.sleep(5)  # let the servers announce before the trainer's first beam search
            # The researcher's own trainer, as the project's Train page makes it (no approval needed).
            train = CodePurpose.TRAIN
            code = join_code_create(project=project, user=project.owner, now=timezone.now(), purpose=train)[1]
            self._spawn("trainer", [agent, "train", "--portal", url, "--join-code", code, "--data-dir",
                                    str(self.base / "trainer"), "--rtc-loopback-only", "--steps",
                                    str(options["steps"]), "--no-progress", "--heartbeat-period", "5",
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
                    signal.SIGINT if name.startswith(("agent", "trainer")) else signal.SIGTERM
                )
        for name, process in reversed(self.children):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            self.stdout.write(f"stopped {name}")
