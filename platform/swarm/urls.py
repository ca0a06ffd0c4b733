"""Swarm routes: the /api/v1/ JSON API, the agent download, and the swarm pages.

Included at the site root before `projects.urls`, so `/projects/<slug>/join/` and `/projects/<slug>/swarm/`
are matched here rather than by the projects app's `<slug>/<action>/` transitions.
"""

from __future__ import annotations

from django.urls import path

from swarm import api, views

app_name = "swarm"

urlpatterns = [
    path("api/v1/openapi.json", api.openapi, name="openapi"),
    path("api/docs/", views.api_docs, name="api_docs"),
    path("api/v1/projects/<slug:slug>/config", api.project_config, name="api_config"),
    path("api/v1/projects/<slug:slug>/swarm", api.project_swarm, name="api_swarm"),
    path("api/v1/projects/<slug:slug>/nodes", api.project_nodes, name="api_nodes"),
    path("api/v1/agent/join", api.agent_join, name="api_join"),
    path("api/v1/agent/join-check", api.join_check, name="api_join_check"),
    path("api/v1/agent/renew", api.agent_renew, name="api_renew"),
    path("api/v1/agent/heartbeat", api.agent_heartbeat, name="api_heartbeat"),
    path("api/v1/agent/metrics", api.agent_metrics, name="api_metrics"),
    path("api/v1/agent/export", api.agent_export, name="api_export"),
    path("api/v1/agent/export/latest", api.agent_export_latest, name="api_export_latest"),
    path("agent/", views.agent_download, name="agent"),
    path("agent/SHA256SUMS", views.agent_checksums, name="agent_sums"),
    path("agent/<str:filename>", views.agent_wheel, name="agent_wheel"),
    path("projects/<slug:slug>/join/", views.join_page, name="join"),
    path("projects/<slug:slug>/train/", views.train_page, name="train"),
    path("projects/<slug:slug>/swarm/", views.project_dashboard, name="dashboard"),
    path("projects/<slug:slug>/export/", views.project_export, name="export_download"),
    path("nodes/", views.my_nodes, name="my_nodes"),
    path("swarm/health/", views.health, name="health"),
    path("swarm/nodes/<int:node_pk>/<str:action>/", views.node_action, name="node_action"),
]
