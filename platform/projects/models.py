"""A training project: what to train (experts, grid, optimiser, dataset), who may join, and its status."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone

from projects.catalog import (
    ARCHITECTURE_CHOICES,
    DATASET_CHOICES,
    OPTIMIZER_CHOICES,
    TRAINING_BYTES_PER_PARAMETER,
    expert_parameters,
    format_count,
    format_grid_shape,
    grid_size,
    parse_grid_shape,
)
from projects.lifecycle import ProjectStatus


def validate_grid_shape(value: str) -> None:
    try:
        parse_grid_shape(value, max_cells=settings.PROJECT_MAX_GRID_CELLS)
    except ValueError as exc:
        raise ValidationError(f"Invalid grid shape: {exc}.") from None


# Words the URL map uses under /projects/; a project with one of these slugs would be unreachable.
RESERVED_SLUGS = frozenset({"new", "mine"})


def validate_slug_not_reserved(value: str) -> None:
    if value in RESERVED_SLUGS:
        raise ValidationError(f"“{value}” is reserved; choose another slug.")


class JoinPolicy(models.TextChoices):
    OPEN = "open", "Anyone may join"
    APPROVAL = "approval", "The owner approves each volunteer"


class Project(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="projects")
    title = models.CharField(max_length=120)
    slug = models.SlugField(
        max_length=60,
        unique=True,
        validators=[validate_slug_not_reserved],
        help_text="Used in URLs and by node agents.",
    )
    description = models.TextField(blank=True)
    expert_architecture = models.CharField(max_length=16, choices=ARCHITECTURE_CHOICES, default="ffn")
    hidden_size = models.PositiveIntegerField(
        default=256, validators=[MinValueValidator(8), MaxValueValidator(8192)], help_text="8 to 8192."
    )
    grid_shape = models.CharField(
        max_length=40, default="16x16", validators=[validate_grid_shape], help_text="e.g. 16x16 or 8x8x4."
    )
    optimizer = models.CharField(max_length=16, choices=OPTIMIZER_CHOICES, default="adam")
    learning_rate = models.FloatField(
        default=1e-3, validators=[MinValueValidator(1e-7), MaxValueValidator(10.0)], help_text="e.g. 0.001"
    )
    dataset = models.CharField(max_length=32, choices=DATASET_CHOICES, default="digits")
    join_policy = models.CharField(max_length=16, choices=JoinPolicy.choices, default=JoinPolicy.OPEN)
    status = models.CharField(max_length=16, choices=ProjectStatus.choices, default=ProjectStatus.DRAFT)
    status_changed_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["status", "-created_at"])]

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("projects:detail", kwargs={"slug": self.slug})

    @property
    def grid_dims(self) -> tuple[int, ...]:
        return parse_grid_shape(self.grid_shape)

    @property
    def expert_count(self) -> int:
        return grid_size(self.grid_dims)

    @property
    def parameters_per_expert(self) -> int:
        return expert_parameters(self.expert_architecture, self.hidden_size)

    @property
    def total_parameters_label(self) -> str:
        """The model's scale across the whole grid, for the project page ("8.6 billion")."""
        return format_count(self.parameters_per_expert * self.expert_count)

    @property
    def expert_memory_mib(self) -> float:
        """What hosting one expert costs a volunteer in memory while training (weights, gradients, Adam)."""
        return round(self.parameters_per_expert * TRAINING_BYTES_PER_PARAMETER / 2**20, 1)

    def normalise(self) -> None:
        """Store the grid in its canonical spelling ("16 X 16" -> "16x16")."""
        self.grid_shape = format_grid_shape(parse_grid_shape(self.grid_shape))
