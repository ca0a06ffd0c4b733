"""`manage.py seed_demo`: idempotently create demo accounts and an active demo project.

Running it twice changes nothing; it resets the demo passwords so the printed ones always work.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import Role, User
from projects import services as project_services
from projects.lifecycle import ProjectStatus
from projects.models import Project

DEMO_PASSWORD = "colearn-demo-pass"
DEMO_RESEARCHER = "researcher@demo.colearn"
DEMO_VOLUNTEER = "volunteer@demo.colearn"
DEMO_ADMIN = "admin@demo.colearn"
DEMO_PROJECT_SLUG = "demo-digits"


class Command(BaseCommand):
    help = "Create a demo researcher, volunteer and admin, and an active demo project (idempotent)."

    def _user(self, email: str, display_name: str, role: str, *, admin: bool = False) -> User:
        user, created = User.objects.get_or_create(
            email=email, defaults={"display_name": display_name, "role": role}
        )
        user.set_password(DEMO_PASSWORD)
        # The demo admin sees the staff-only swarm-health page and Django's admin.
        user.is_staff = user.is_superuser = admin
        user.save(update_fields=["password", "is_staff", "is_superuser"])
        label = "admin" if admin else role
        self.stdout.write(f"{'created' if created else 'kept'} {label}: {email} / {DEMO_PASSWORD}")
        return user

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        researcher = self._user(DEMO_RESEARCHER, "Demo Researcher", Role.RESEARCHER)
        self._user(DEMO_VOLUNTEER, "Demo Volunteer", Role.VOLUNTEER)
        self._user(DEMO_ADMIN, "Demo Admin", Role.RESEARCHER, admin=True)
        project = Project.objects.filter(slug=DEMO_PROJECT_SLUG).first()
        if project is None:
            project = project_services.project_create(
                owner=researcher,
                title="Demo: handwritten digits",
                slug=DEMO_PROJECT_SLUG,
                description="A small mixture of feed-forward experts learning scikit-learn's 8x8 digits.",
                expert_architecture="ffn",
                hidden_size=64,
                grid_shape="4x4",
                optimizer="adam",
                learning_rate=1e-3,
                dataset="digits",
                join_policy="open",
                launch=True,
            )
            self.stdout.write(f"created project {project.slug} ({project.status})")
        else:
            if project.status == ProjectStatus.PAUSED:
                project_services.project_resume(project=project, actor=project.owner)
            elif project.status == ProjectStatus.DRAFT:
                project_services.project_activate(project=project, actor=project.owner)
            self.stdout.write(f"kept project {project.slug} ({project.status})")
