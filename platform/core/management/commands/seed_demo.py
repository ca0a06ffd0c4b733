"""`manage.py seed_demo`: idempotently create demo accounts and two active demo projects (digits, a small LM).

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
DEMO_LM_PROJECT_SLUG = "demo-lm"


class Command(BaseCommand):
    help = "Create a demo researcher, volunteer and admin, and active demo projects (idempotent)."

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
        self._project(
            researcher,
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
        )
        # Small enough for a laptop to serve: 2 blocks of 2x2 experts of width 64 (8 experts, 33k each).
        self._project(
            researcher,
            title="Demo: a byte-level language model on Python sources",
            slug=DEMO_LM_PROJECT_SLUG,
            description=(
                "A Transformer language model whose blocks' feed-forward layers are decentralized "
                "mixtures of experts, learning the Python standard library's own source code byte by byte."
            ),
            task="lm",
            lm_corpus="python-stdlib",
            lm_blocks=2,
            lm_seq_len=64,
            lm_window=32,
            lm_heads=4,
            expert_architecture="ffn",
            hidden_size=64,
            grid_shape="2x2",
            optimizer="adam",
            learning_rate=1e-3,
            dataset="digits",
            join_policy="open",
        )

    def _project(self, owner: User, *, slug: str, **fields: Any) -> Project:
        """The demo project `slug`, created active or brought back to active."""
        project = Project.objects.filter(slug=slug).first()
        if project is None:
            project = project_services.project_create(owner=owner, slug=slug, launch=True, **fields)
            self.stdout.write(f"created project {project.slug} ({project.status})")
            return project
        if project.status == ProjectStatus.PAUSED:
            project_services.project_resume(project=project, actor=project.owner)
        elif project.status == ProjectStatus.DRAFT:
            project_services.project_activate(project=project, actor=project.owner)
        self.stdout.write(f"kept project {project.slug} ({project.status})")
        return project
