from __future__ import annotations

from django.urls import path

from credit import api

app_name = "credit"

urlpatterns = [
    path("api/v1/credit/leaderboard", api.leaderboard, name="api_leaderboard"),
    path("api/v1/credit/stats/<str:name>", api.stats_file, name="api_stats"),
]
