"""Project forms: field shapes and friendly errors; the rules are in services and the model."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from projects.catalog import (
    DEFAULT_EXPERTS_PER_VOLUNTEER,
    EXPERT_PARAMETER_COEFFICIENTS,
    LM_MAX_BLOCKS,
    MAX_GRID_DIMS,
    MAX_GRID_SIDE,
    TASK_LM,
    TRAINING_BYTES_PER_PARAMETER,
    VOLUNTEER_MEMORY_BYTES,
    ModelScale,
    expert_parameters,
    format_bytes,
    format_count,
    format_grid_shape,
    model_scale,
    parse_grid_shape,
)
from projects.lifecycle import PUBLIC_STATUSES, ProjectStatus
from projects.models import Project
from projects.services import EDITABLE_FIELDS

#: Fields that only a language model uses; the page shows them when the task is `lm`.
LM_FIELDS = ("lm_corpus", "lm_blocks", "lm_seq_len", "lm_window", "lm_heads")


class ProjectForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = list(EDITABLE_FIELDS)  # the service decides what an edit may change
        widgets = {
            "description": forms.Textarea(attrs={"rows": 5}),
            "join_policy": forms.RadioSelect,
            "task": forms.RadioSelect,
            "learning_rate": forms.NumberInput(attrs={"step": "any"}),
        }
        labels = {
            "expert_architecture": "Expert architecture",
            "join_policy": "Who may join",
            "dataset": "Dataset (classification)",
            "lm_corpus": "Text (language model)",
        }
        help_texts = {
            "grid_shape": (
                f"e.g. 16x16 or 8x8x4, per block for a language model; at most "
                f"{settings.PROJECT_MAX_GRID_CELLS:,} cells across all grids."
            )
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A classifier's form may leave the language-model fields out (scripts, older pages): they keep
        # their current values. A language model needs each of them (see clean).
        for name in ("task", *LM_FIELDS):
            self.fields[name].required = False

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        task = data.get("task") or self.instance.task
        data["task"] = task
        for name in LM_FIELDS:
            if name in self.errors or data.get(name) not in (None, ""):
                continue
            if task == TASK_LM:
                self.add_error(name, "A language model needs this.")
            else:
                data[name] = getattr(self.instance, name)
        return data

    def scale_preview(self) -> ModelScale | None:
        """The figures the form shows next to its fields: from what was typed when it is valid so far,
        else from the project (or the defaults); None when neither makes a grid."""
        values = {name: self.initial.get(name, self.fields[name].initial) for name in self.fields}
        if self.is_bound:
            values.update(getattr(self, "cleaned_data", {}))
        try:
            architecture = str(values["expert_architecture"])
            hidden = int(values["hidden_size"])
            dims = parse_grid_shape(str(values["grid_shape"]), max_cells=settings.PROJECT_MAX_GRID_CELLS)
            blocks = int(values["lm_blocks"]) if values["task"] == TASK_LM else 1
            expert_parameters(architecture, hidden)
        except (KeyError, TypeError, ValueError):
            return None
        if not (1 <= blocks <= LM_MAX_BLOCKS and 1 <= hidden <= 8192):
            return None
        return model_scale(architecture, hidden, dims, blocks)

    def clean_grid_shape(self) -> str:
        try:
            limit = settings.PROJECT_MAX_GRID_CELLS
            dims = parse_grid_shape(self.cleaned_data["grid_shape"], max_cells=limit)
            return format_grid_shape(dims)
        except ValueError as exc:
            raise forms.ValidationError(f"Invalid grid shape: {exc}.") from None


def figure_context(form: ProjectForm) -> dict[str, Any]:
    """The project form's figures panel: the server's figures and the rules its script computes them by."""
    scale = form.scale_preview()
    labels = None
    if scale is not None:
        labels = {
            "total_parameters": format_count(scale.total_parameters),
            "memory_per_expert": format_bytes(scale.memory_per_expert_bytes),
            "volunteer_memory": format_bytes(scale.volunteer_memory_bytes),
        }
    rules = {
        "coefficients": EXPERT_PARAMETER_COEFFICIENTS,
        "bytes_per_parameter": TRAINING_BYTES_PER_PARAMETER,
        "volunteer_experts": DEFAULT_EXPERTS_PER_VOLUNTEER,
        "volunteer_memory": VOLUNTEER_MEMORY_BYTES,
        "max_cells": settings.PROJECT_MAX_GRID_CELLS,
        "max_grid_dims": MAX_GRID_DIMS,
        "max_grid_side": MAX_GRID_SIDE,
        "max_blocks": LM_MAX_BLOCKS,
    }
    return {"scale": scale, "scale_labels": labels, "figure_rules": rules}


class ProjectCreateForm(ProjectForm):
    slug = forms.SlugField(
        max_length=60, required=False, help_text="Optional; made from the title when left empty."
    )
    launch = forms.BooleanField(
        required=False, initial=True, label="Start accepting volunteers now (otherwise save as a draft)"
    )

    class Meta(ProjectForm.Meta):
        fields = ["title", "slug", *ProjectForm.Meta.fields[1:]]


class ProjectFilterForm(forms.Form):
    """The listing's search box and status filter; invalid values are simply ignored."""

    q = forms.CharField(required=False, max_length=100, label="Search")
    status = forms.ChoiceField(
        required=False,
        choices=[("", "Any status"), *[(s.value, s.label) for s in ProjectStatus if s in PUBLIC_STATUSES]],
    )
