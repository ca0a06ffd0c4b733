from __future__ import annotations

from django.urls import path

from credit import api, views

app_name = "credit"

urlpatterns = [
    path("api/v1/credit/leaderboard", api.leaderboard, name="api_leaderboard"),
    path("api/v1/credit/stats/<str:name>", api.stats_file, name="api_stats"),
    path("credit/", views.leaderboard, name="leaderboard"),
    path("credit/mine/", views.my_credit, name="mine"),
    path("credit/privacy/", views.privacy, name="privacy"),
    path("credit/team/", views.team, name="team"),
    path("credit/users/<int:user_id>/", views.profile, name="profile"),
]
