"""Swarm pages: Join, agent download, My nodes, the project swarm dashboard and the admin health page.

Views stay thin: permissions, a selector or a service, a template. Every figure shown carries its age.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from accounts.http import AuthenticatedHttpRequest
from projects.lifecycle import ProjectStatus
from projects.models import Project
from projects.permissions import can_manage_project, can_view_project
from projects.selectors import project_get
from swarm import ratelimit, selectors, services
from swarm.api import portal_url
from swarm.charts import labelled_polylines, polyline, split_runs, time_polylines
from swarm.errors import Conflict, RateLimited
from swarm.exports import export_path, latest_export
from swarm.models import CodePurpose, Node
from swarm.openapi import openapi_schema
from swarm.permissions import can_view_swarm
from swarm.reconcile import grid_cells, grid_uids
from swarm.wheel import SUMS_FILE, latest_wheel, wheel_dir, wheel_path

logger = logging.getLogger(__name__)

CONTRIBUTION_WINDOW = timedelta(hours=24)


#: PyTorch's own index of CPU-only wheels (about 200 MB instead of PyPI's Linux build with CUDA, several GB).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

#: Asks the portal whether the code is usable before anything is installed (stdlib only: nothing is yet).
CHECK_SCRIPT = (
    "import json,sys,urllib.request as r;a=json.load(r.urlopen(sys.argv[1],sys.argv[2].encode(),30));"
    "print(a['detail']);sys.exit(0 if a['ok'] else 1)"
)


def agent_commands(*, base_url: str, wheel_name: str, code: str, run: str) -> dict[str, str]:
    """The command per platform (and, on Linux, per PyTorch build) that checks `code` with this portal,
    installs the agent from it and runs `node-agent <run>`: `linux` (CPU-only PyTorch), `linux_gpu` (PyPI's
    CUDA build), `macos` and `windows` (PyPI's builds there carry no CUDA). The Join and Train pages differ
    only in `run`."""
    wheel_url = f"{base_url}/agent/{wheel_name}"
    check_url = f"{base_url}/api/v1/agent/join-check"

    def posix(pip_options: str) -> str:
        return (
            f'python3 -c "{CHECK_SCRIPT}" {check_url} {code} && '
            f"python3 -m venv colearn-agent && colearn-agent/bin/pip install {pip_options}{wheel_url} && "
            f"colearn-agent/bin/node-agent {run}"
        )

    windows = (
        f'py -c "{CHECK_SCRIPT}" {check_url} {code}; '
        "if ($?) { py -m venv colearn-agent }; "
        f"if ($?) {{ colearn-agent\\Scripts\\pip install {wheel_url} }}; "
        f"if ($?) {{ colearn-agent\\Scripts\\node-agent {run} }}"
    )
    return {
        "linux": posix(f"--extra-index-url {TORCH_CPU_INDEX} "),
        "linux_gpu": posix(""),
        "macos": posix(""),
        "windows": windows,
    }


def _code_page(
    request: AuthenticatedHttpRequest, project: Project, *, purpose: str, template: str
) -> HttpResponse:
    """The Join and Train pages: GET explains and offers a button; only the POST (CSRF-checked,
    rate-limited) creates a one-time code and shows the command that installs the agent and uses it."""
    wheel = latest_wheel()
    context: dict[str, Any] = {
        "project": project,
        "wheel": wheel,
        "approval": project.join_policy == "approval",
    }
    if project.status != ProjectStatus.ACTIVE:
        context["closed"] = True
    elif wheel is not None and request.method == "POST":
        now = timezone.now()
        try:
            ratelimit.enforce("RATE_JOIN_CODES_PER_USER", str(request.user.pk), now=now.timestamp())
        except RateLimited as exc:
            logger.warning("user %s asks for join codes too often", request.user.pk)
            context["rate_limited"] = exc.detail
            response = render(request, template, context, status=429)
            response["Retry-After"] = str(max(1, math.ceil(exc.retry_after or 1)))
            return response
        row, code = services.join_code_create(project=project, user=request.user, now=now, purpose=purpose)
        base_url = portal_url(request)
        context |= {
            "code": code,
            "expires_at": row.expires_at,
            "ttl_minutes": int((row.expires_at - now).total_seconds() // 60),
            "commands": agent_commands(
                base_url=base_url,
                wheel_name=wheel.filename,
                code=code,
                run=AGENT_RUN[purpose](base_url, code),
            ),
            "portal_url": base_url,
        }
    return render(request, template, context)


#: What the installed agent runs, per code purpose: serve the project's experts, or train its model.
AGENT_RUN: dict[str, Callable[[str, str], str]] = {
    CodePurpose.JOIN: lambda base_url, code: f"join {base_url} {code}",
    CodePurpose.TRAIN: lambda base_url, code: f"train --portal {base_url} --join-code {code}",
}


@login_required
@never_cache
@require_http_methods(["GET", "POST"])
def join_page(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """A volunteer's command that installs the agent and serves the project's experts."""
    project = project_get(slug=slug)
    if project is None or not can_view_project(request.user, project):
        raise Http404("No such project.")
    return _code_page(request, project, purpose=CodePurpose.JOIN, template="swarm/join.html")


@login_required
@never_cache
@require_http_methods(["GET", "POST"])
def train_page(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """The owner's command that installs the agent and trains the project's model on its swarm (no approval
    needed: the owner's own node is approved on join)."""
    project = project_get(slug=slug)
    if project is None or not can_view_project(request.user, project):
        raise Http404("No such project.")
    if not can_manage_project(request.user, project):
        raise PermissionDenied("Only the project's owner trains it.")
    return _code_page(request, project, purpose=CodePurpose.TRAIN, template="swarm/train.html")


def agent_download(request: HttpRequest) -> HttpResponse:
    return render(request, "swarm/agent.html", {"wheel": latest_wheel(), "portal_url": portal_url(request)})


def agent_wheel(request: HttpRequest, filename: str) -> FileResponse:
    path = wheel_path(filename)
    if path is None:
        raise Http404("No such agent wheel.")
    return FileResponse(
        path.open("rb"), as_attachment=True, filename=filename, content_type="application/zip"
    )


def agent_checksums(request: HttpRequest) -> HttpResponse:
    path = wheel_dir() / SUMS_FILE
    if not path.is_file():
        raise Http404("The agent has not been built yet.")
    return HttpResponse(path.read_text(), content_type="text/plain; charset=utf-8")


@login_required
def my_nodes(request: AuthenticatedHttpRequest) -> HttpResponse:
    now = timezone.now()
    nodes = list(selectors.nodes_of_user(user=request.user))
    series = selectors.contribution_series(nodes=nodes, since=now - CONTRIBUTION_WINDOW)
    rows = [
        {
            "node": node,
            "credential": selectors.node_credential_state(node=node, now=now),
            "heartbeat_age_s": selectors.age_s(node.last_heartbeat_at, now),
            "state_age_s": selectors.age_s(node.state_changed_at, now),
            "sparkline": polyline([float(s) for _, s in series[node.pk]], width=160, height=36),
            "buckets": len(series[node.pk]),
        }
        for node in nodes
    ]
    return render(request, "swarm/my_nodes.html", {"rows": rows, "now": now})


#: A grid up to this many cells is drawn cell by cell in the server-rendered page; larger ones summarised.
MAX_RENDERED_CELLS = 1024


def project_dashboard(request: HttpRequest, slug: str) -> HttpResponse:
    """The swarm page: counts, one page of nodes and coverage that costs the same for any grid size."""
    project = project_get(slug=slug)
    if project is None or not can_view_swarm(request.user, project):
        raise Http404("No such project.")
    now = timezone.now()
    dims = project.grid_dims
    small_grid = grid_cells(dims) <= MAX_RENDERED_CELLS
    state = selectors.swarm_state(
        project=project,
        viewer=request.user,
        now=now,
        nodes_limit=0,
        cells_limit=0,
        holes_limit=50,
    )
    metrics = selectors.recent_metrics(project=project)
    runs = split_runs((f"{m.node_id}/{m.run}", m.step, m) for m in metrics)  # a line per trainer run
    if project.is_language_model:  # bits per byte instead of accuracy: training and validation lines
        evals = selectors.recent_metrics(project=project, kinds=("eval",))
        eval_runs = split_runs((f"{m.node_id}/{m.run}", m.step, m) for m in evals)
        bpb = [
            (f"line-bpb-{kind}", [(m.timestamp.timestamp(), m.bits_per_byte) for m in run if m.bits_per_byte])
            for kind, group in (("train", runs), ("eval", eval_runs))
            for run in group
        ]
        second_lines = labelled_polylines(bpb, width=520, height=140)
        last_eval = evals[-1] if evals else None
    else:
        accuracy = [("line-accuracy", [(m.timestamp.timestamp(), m.accuracy) for m in run]) for run in runs]
        second_lines = labelled_polylines(accuracy, width=520, height=140)
        last_eval = None
    nodes = list(selectors.nodes_of_project(project=project)[: selectors.NODES_PAGE[1]])
    if small_grid:
        covered = selectors.coverage_of(project=project)
        cells = [(uid, covered.get(uid, 0)) for uid in grid_uids(selectors.expert_prefix(project), dims)]
    else:
        cells = []
    context = {
        "project": project,
        "state": state,
        "now": now,
        "can_manage": can_manage_project(request.user, project),
        "nodes": nodes,
        "node_total": state["nodes_page"]["count"],
        "cells": cells,
        "grid_columns": dims[-1] if len(dims) > 1 else min(dims[0], 16),
        "loss_lines": time_polylines(
            [[(m.timestamp.timestamp(), m.loss) for m in run] for run in runs], width=520, height=140
        ),
        "second_lines": second_lines,
        "last_eval": last_eval,
        "run_count": len(runs),
        "last_metric": metrics[-1] if metrics else None,
        "metrics_count": len(metrics),
        "alerts": list(selectors.open_alerts(project=project)[:20]),
        "replicas": selectors.replica_summary(project=project, now=now),
        "latest_export": latest_export(project_id=project.pk)
        if can_manage_project(request.user, project)
        else None,
    }
    return render(request, "swarm/dashboard.html", context)


@login_required
def health(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Staff only: an anonymous visitor goes to the portal's login (not the admin's), others get a 403."""
    if not request.user.is_staff:
        raise PermissionDenied("The swarm-health page is for the portal's staff.")
    now = timezone.now()
    return render(request, "swarm/health.html", {"rows": selectors.health_overview(now=now), "now": now})


def _next_url_from(target: str, fallback: str) -> str:
    """A local path to go back to; anything else (another site, `//host`) is replaced by `fallback`."""
    return target if target.startswith("/") and not target.startswith("//") else fallback


def _next_url(request: HttpRequest, fallback: str) -> str:
    return _next_url_from(request.POST.get("next", ""), fallback)


#: What each node action says on its confirmation page; approve needs none (it is undone by a ban).
NODE_ACTION_CONFIRM = {
    "ban": ("Ban node", "Its credentials are revoked and its agent is refused; staff can unban it later."),
    "ban-user": ("Ban user", "Every node of this volunteer is banned and they can get no new join codes."),
    "unban": ("Unban node", "The node may join again: its volunteer runs the join command once more."),
    "unban-user": (
        "Unban user",
        "The volunteer may join swarms again; their nodes banned with the account are unbanned and go "
        "offline (each agent joins again with a new join command). Nodes banned on their own stay banned.",
    ),
}


@login_required
@require_http_methods(["GET", "POST"])
def node_action(request: AuthenticatedHttpRequest, node_pk: int, action: str) -> HttpResponse:
    """POST acts; GET shows the confirmation page of a ban or unban (a step that needs no JavaScript)."""
    node = get_object_or_404(Node.objects.select_related("project", "user"), pk=node_pk)
    if not can_manage_project(request.user, node.project):
        logger.warning("user %s tried to %s node %s", request.user.pk, action, node.pk)
        raise PermissionDenied("Only the project's owner or an admin can do that.")
    fallback = f"/projects/{node.project.slug}/swarm/"
    if request.method == "GET":
        if action not in NODE_ACTION_CONFIRM:
            return HttpResponseNotAllowed(["POST"])
        title, consequence = NODE_ACTION_CONFIRM[action]
        return render(
            request,
            "core/confirm.html",
            {
                "title": f"{title} {node.user.display_name}?"
                if action == "unban-user"
                else f"{title} {node.short_id}?",
                "subject": f"Node {node.short_id} of {node.user.display_name} in “{node.project.title}”",
                "consequence": consequence,
                "action_url": request.path,
                "button": title,
                "danger": not action.startswith("unban"),
                "reason": action == "ban",
                "next": _next_url_from(request.GET.get("next", ""), fallback),
            },
        )
    now = timezone.now()
    try:
        if action == "approve":
            services.node_approve(node=node, actor=request.user, now=now)
            messages.success(request, f"Node {node.short_id} approved; its agent will now get a credential.")
        elif action == "ban":
            reason = request.POST.get("reason", "")[:200]
            services.node_ban(node=node, actor=request.user, reason=reason, now=now)
            messages.success(request, f"Node {node.short_id} banned; its credentials are revoked.")
        elif action == "ban-user":
            count = services.user_ban(
                user=node.user, actor=request.user, reason="banned by an admin", now=now
            )
            messages.success(request, f"{node.user.display_name} banned; {count} node(s) banned.")
        elif action == "unban":
            services.node_unban(node=node, actor=request.user, now=now)
            messages.success(request, f"Node {node.short_id} unbanned; it may join again.")
        elif action == "unban-user":
            count = services.user_unban(user=node.user, actor=request.user, now=now)
            messages.success(request, f"{node.user.display_name} unbanned; {count} node(s) unbanned.")
        else:
            raise Http404("No such action.")
    except Conflict as exc:
        messages.error(request, exc.detail)
    return redirect(_next_url(request, fallback))


def _component(schema: dict[str, Any], request_body: dict[str, Any]) -> Any:
    """The request body's schema, its `$ref` to a generated component resolved (one level)."""
    body = request_body.get("content", {}).get("application/json", {}).get("schema", {})
    ref = body.get("$ref", "") if isinstance(body, dict) else ""
    return schema["components"]["schemas"].get(ref.rsplit("/", 1)[-1], body) if ref else body


def api_docs(request: HttpRequest) -> HttpResponse:
    schema = openapi_schema(server_url=portal_url(request))
    operations = [
        {
            "path": path,
            "method": method.upper(),
            "summary": op["summary"],
            "description": op["description"],
            "responses": sorted(op["responses"]),
            "body": json.dumps(_component(schema, op["requestBody"]), indent=2)
            if "requestBody" in op
            else "",
        }
        for path, item in schema["paths"].items()
        for method, op in item.items()
    ]
    return render(request, "swarm/api_docs.html", {"schema": schema, "operations": operations})


def project_export(request: HttpRequest, slug: str) -> FileResponse:
    """The latest model export the owner's agent uploaded: for the owner (and staff) only."""
    project = project_get(slug=slug)
    if project is None or not can_manage_project(request.user, project):
        raise Http404("No such project.")
    export = latest_export(project_id=project.pk)
    if export is None or not export_path(export).exists():
        raise Http404("No export uploaded yet.")
    return FileResponse(
        export_path(export).open("rb"),
        as_attachment=True,
        filename=f"{project.slug}-{export.sha256[:12]}.safetensors",
    )
