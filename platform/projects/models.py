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
    CORPUS_CHOICES,
    DATASET_CHOICES,
    LM_MAX_BLOCKS,
    LM_MAX_HEADS,
    LM_MAX_SEQ_LEN,
    OPTIMIZER_CHOICES,
    TASK_CHOICES,
    TASK_CLASSIFICATION,
    TASK_LM,
    ModelScale,
    format_bytes,
    format_count,
    format_grid_shape,
    lm_block_prefix,
    model_scale,
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
    task = models.CharField(
        max_length=16,
        choices=TASK_CHOICES,
        default=TASK_CLASSIFICATION,
        help_text="A language model has one expert grid per Transformer block.",
    )
    lm_corpus = models.CharField(
        "text",
        max_length=16,
        choices=CORPUS_CHOICES,
        default="python-stdlib",
        help_text="Language models only.",
    )
    lm_blocks = models.PositiveSmallIntegerField(
        "Transformer blocks",
        default=2,
        validators=[MinValueValidator(1), MaxValueValidator(LM_MAX_BLOCKS)],
        help_text=f"1 to {LM_MAX_BLOCKS}; each block's feed-forward layer is its own expert grid.",
    )
    lm_seq_len = models.PositiveSmallIntegerField(
        "sequence length",
        default=128,
        validators=[MinValueValidator(8), MaxValueValidator(LM_MAX_SEQ_LEN)],
        help_text=f"Bytes per training sequence, 8 to {LM_MAX_SEQ_LEN}.",
    )
    lm_window = models.PositiveSmallIntegerField(
        "attention window",
        default=64,
        validators=[MinValueValidator(1), MaxValueValidator(LM_MAX_SEQ_LEN)],
        help_text="Each byte attends to this many bytes (itself included); at most the sequence length.",
    )
    lm_heads = models.PositiveSmallIntegerField(
        "attention heads",
        default=4,
        validators=[MinValueValidator(1), MaxValueValidator(LM_MAX_HEADS)],
        help_text="The hidden size must be a multiple of it.",
    )
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

    def clean(self) -> None:
        """Rules across fields: a language model's shape, and the cell limit over all of its grids."""
        super().clean()
        if self.task != TASK_LM:
            return
        errors: dict[str, str] = {}
        if self.expert_architecture != "ffn":
            errors["expert_architecture"] = "A language model's experts are feed-forward blocks."
        heads, hidden = self.lm_heads, self.hidden_size
        if heads and hidden and hidden % heads:
            errors["lm_heads"] = f"The hidden size {hidden} is not a multiple of {heads} heads."
        if self.lm_window and self.lm_seq_len and self.lm_window > self.lm_seq_len:
            errors["lm_window"] = f"The window can be at most the sequence length ({self.lm_seq_len})."
        try:
            cells = self.scale.total_experts
        except (ValueError, TypeError):
            cells = 0  # the grid's own field error says why
        limit = settings.PROJECT_MAX_GRID_CELLS
        if cells > limit:
            errors["lm_blocks"] = (
                f"{self.lm_blocks} blocks of {self.grid_shape} make {cells:,} experts; "
                f"the grids may have at most {limit:,} in all."
            )
        if errors:
            raise ValidationError(errors)

    @property
    def is_language_model(self) -> bool:
        return self.task == TASK_LM

    @property
    def data_label(self) -> str:
        """What the model learns from, for cards: the dataset, or a language model's text."""
        if self.is_language_model:
            own = self.lm_corpus == "own"
            return "Language model on " + ("the researcher's own text" if own else "Python sources")
        return self.get_dataset_display()

    @property
    def grid_dims(self) -> tuple[int, ...]:
        return parse_grid_shape(self.grid_shape)

    @property
    def blocks(self) -> int:
        """Expert grids of the project: one per block of a language model, one for a classifier."""
        return self.lm_blocks if self.is_language_model else 1

    @property
    def grid_prefixes(self) -> list[str]:
        """The grids' names in uids and DHT keys: `ffn` (a classifier's one grid) or `lm.b0`, `lm.b1`, ..."""
        if self.is_language_model:
            return [lm_block_prefix(block) for block in range(self.lm_blocks)]
        return [self.expert_architecture]

    @property
    def scale(self) -> ModelScale:
        return model_scale(self.expert_architecture, self.hidden_size, self.grid_dims, self.blocks)

    @property
    def expert_count(self) -> int:
        """Experts of one grid (a language model has `blocks` such grids)."""
        return self.scale.experts_per_block

    @property
    def parameters_per_expert(self) -> int:
        return self.scale.parameters_per_expert

    @property
    def total_parameters_label(self) -> str:
        """The model's scale across all of its grids, for the project page ("8.6 billion")."""
        return format_count(self.scale.total_parameters)

    @property
    def expert_memory_label(self) -> str:
        """What hosting one expert costs a volunteer while training (fp32 weights, gradients, Adam)."""
        return format_bytes(self.scale.memory_per_expert_bytes)

    @property
    def volunteer_memory_label(self) -> str:
        return format_bytes(self.scale.volunteer_memory_bytes)

    def normalise(self) -> None:
        """Store the grid in its canonical spelling ("16 X 16" -> "16x16")."""
        self.grid_shape = format_grid_shape(parse_grid_shape(self.grid_shape))
