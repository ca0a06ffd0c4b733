from __future__ import annotations

from django.urls import path

from projects import views

app_name = "projects"

urlpatterns = [
    path("", views.project_list, name="list"),
    path("mine/", views.project_list_mine, name="mine"),
    path("new/", views.project_create, name="create"),
    path("<slug:slug>/", views.project_detail, name="detail"),
    path("<slug:slug>/edit/", views.project_edit, name="edit"),
    path(
        "<slug:slug>/<str:action>/",
        views.project_transition,
        name="transition",
    ),
]
