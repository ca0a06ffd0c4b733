"""What one anonymous request for a swarm costs, by grid size: the API, the page and the live snapshot.

Projects of each grid are made in a throwaway SQLite database (the largest allowed grid, 256x256, fully
covered; grids made before the cell limit, 1024x1024 and 1024x1024x1024x1024, written straight to the
table as they were then) and each view is read through Django's test client, in process. Prints one JSON
object: per grid and view, the median milliseconds, the answer's bytes and the peak Python memory (MiB).

    python benchmarks/bench_portal_grid.py --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GRIDS = {"16x16": 1.0, "256x256": 1.0, "1024x1024": 0.01, "1024x1024x1024x1024": 0.0}


def measure(action: Callable[[], Any], repeat: int) -> dict[str, float]:
    times, size = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
        size = len(result) if isinstance(result, bytes | str) else len(json.dumps(result))
    tracemalloc.start()
    action()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "ms": round(statistics.median(times) * 1000, 2),
        "bytes": size,
        "peak_mib": round(peak / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-portal-grid-"))
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env |= {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "VAR_DIR": str(workdir),
        "LOG_LEVEL": "ERROR",
        "DEBUG": "0",
        "SECRET_KEY": os.urandom(16).hex(),
        "ALLOWED_HOSTS": "testserver",
        "SECURE_SSL_REDIRECT": "0",
        "STATIC_MANIFEST": "0",
        "PORTAL_SIGNING_KEY": os.urandom(32).hex(),
        "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)]),
    }
    os.environ.update(env)
    sys.path[:0] = [str(REPO / "platform"), str(REPO)]
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, env=env, check=True)

    import django

    django.setup()
    from django.test import Client

    from accounts.models import Role, User
    from live.selectors import snapshot_parts
    from projects.catalog import grid_size, parse_grid_shape
    from projects.models import Project
    from swarm.models import ProjectSwarm
    from swarm.reconcile import cell_uid

    owner = User.objects.create_user(
        "owner@bench.local", "x" * 20, display_name="Owner", role=Role.RESEARCHER
    )
    client = Client()
    results: dict[str, Any] = {}
    for shape, covered_share in GRIDS.items():
        slug = "grid-" + shape.replace("x", "-")
        project = Project.objects.create(
            owner=owner, title=shape, slug=slug, grid_shape=shape, status="active"
        )
        dims = parse_grid_shape(shape)
        covered = min(65_536, int(grid_size(dims) * covered_share))
        cells = {cell_uid(project.expert_architecture, dims, i): 1 + i % 3 for i in range(covered)}
        ProjectSwarm.objects.create(project=project, coverage=cells)
        results[shape] = {
            "cells": grid_size(dims),
            "covered": covered,
            "api_swarm": measure(
                lambda s=slug: client.get(f"/api/v1/projects/{s}/swarm").content, args.repeat
            ),
            "page": measure(lambda s=slug: client.get(f"/projects/{s}/swarm/").content, args.repeat),
            "live_snapshot": measure(lambda p=project: snapshot_parts(project=p), args.repeat),
        }
    print(json.dumps({"benchmark": "portal_grid", "repeat": args.repeat, "grids": results}))


if __name__ == "__main__":
    main()
