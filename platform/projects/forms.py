"""Project forms: field shapes and friendly errors; the rules are in services and the model."""

from __future__ import annotations

from django import forms
from django.conf import settings

from projects.catalog import format_grid_shape, parse_grid_shape
from projects.lifecycle import PUBLIC_STATUSES, ProjectStatus
from projects.models import Project
from projects.services import EDITABLE_FIELDS


class ProjectForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = list(EDITABLE_FIELDS)  # the service decides what an edit may change
        widgets = {
            "description": forms.Textarea(attrs={"rows": 5}),
            "join_policy": forms.RadioSelect,
            "learning_rate": forms.NumberInput(attrs={"step": "any"}),
        }
        labels = {"expert_architecture": "Expert architecture", "join_policy": "Who may join"}
        help_texts = {
            "grid_shape": f"e.g. 16x16 or 8x8x4; at most {settings.PROJECT_MAX_GRID_CELLS:,} cells in all."
        }

    def clean_grid_shape(self) -> str:
        try:
            limit = settings.PROJECT_MAX_GRID_CELLS
            dims = parse_grid_shape(self.cleaned_data["grid_shape"], max_cells=limit)
            return format_grid_shape(dims)
        except ValueError as exc:
            raise forms.ValidationError(f"Invalid grid shape: {exc}.") from None


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
