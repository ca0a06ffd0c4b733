from __future__ import annotations

from django.apps import AppConfig


class CreditConfig(AppConfig):
    name = "credit"
    verbose_name = "Volunteer credit"
