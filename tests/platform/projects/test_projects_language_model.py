"""Language-model projects: the form's rules (hostile input too), the figures, the page and the config."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from node_agent.portal.project_config import parse_project_config
from projects.catalog import DEFAULT_EXPERTS_PER_VOLUNTEER, expert_parameters, lm_block_prefix, model_scale
from projects.models import Project

pytestmark = pytest.mark.django_db

LM_FIELDS = {
    "task": "lm",
    "lm_corpus": "python-stdlib",
    "lm_blocks": 4,
    "lm_seq_len": 128,
    "lm_window": 64,
    "lm_heads": 8,
    "hidden_size": 1024,
    "grid_shape": "16x16",
}


@pytest.fixture
def lm_form(project_fields: dict[str, object]) -> dict[str, object]:
    return {**project_fields, **LM_FIELDS, "title": "Byte LM", "slug": "", "launch": "on"}


def field_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, "an invalid form is shown again, never a 500 or a redirect"
    return {name: list(errors) for name, errors in response.context["form"].errors.items()}


def test_the_scale_of_four_blocks_of_16x16_experts_of_width_1024() -> None:
    scale = model_scale("ffn", 1024, (16, 16), blocks=4)
    per_expert = 8 * 1024 * 1024 + 7 * 1024
    assert (scale.total_experts, scale.parameters_per_expert) == (1024, per_expert)
    assert scale.total_parameters == 1024 * per_expert  # about 8.6 billion
    assert scale.memory_per_expert_bytes == per_expert * 16
    assert (scale.volunteer_hosts, scale.volunteers_to_cover) == (4, 256)
    assert model_scale("ffn", 64, (2, 2), blocks=1).volunteer_hosts == 4
    assert model_scale("ffn", 64, (1,), blocks=1).volunteer_hosts == 1


def test_the_portal_names_and_counts_grids_as_the_agent_does() -> None:
    """The portal keeps torch-free copies of the LM's grid names and expert sizes; they must agree."""
    import argparse

    from node_agent.cli.join import register
    from node_agent.portal.census import default_expert_count
    from node_agent.training.lm import LMConfig, block_prefix, grid_parameters

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["join", "http://portal", "CODE"]).experts is None  # the census's default:
    small = expert_parameters("ffn", 64)  # 4, or one per grid when there are more, within 2 GiB
    two_blocks = [("lm.b0", [2, 2]), ("lm.b1", [2, 2])]
    assert default_expert_count(two_blocks, small) == DEFAULT_EXPERTS_PER_VOLUNTEER
    for blocks, hidden in ((2, 64), (8, 64), (4, 1024), (64, 1024), (3, 4096)):
        grids = [(f"lm.b{b}", [16, 16]) for b in range(blocks)]
        per_expert = expert_parameters("ffn", hidden)
        scale = model_scale("ffn", hidden, (16, 16), blocks=blocks)
        assert scale.volunteer_hosts == default_expert_count(grids, per_expert), (blocks, hidden)

    assert [lm_block_prefix(b) for b in range(3)] == [block_prefix("lm", b) for b in range(3)]
    per_expert, total = grid_parameters(LMConfig(hidden_dim=64, blocks=3, grid=(2, 3)))
    assert per_expert == expert_parameters("ffn", 64)
    assert total == model_scale("ffn", 64, (2, 3), blocks=3).total_parameters


def test_a_researcher_creates_a_language_model_through_the_form(
    researcher, logged_in, lm_form, client
) -> None:
    browser = logged_in(researcher)
    page = browser.get(reverse("projects:create")).content.decode()
    assert "What volunteers will host" in page and 'id="model-figure-rules"' in page
    response = browser.post(reverse("projects:create"), lm_form)
    project = Project.objects.get()
    assert response.status_code == 302 and response["Location"] == project.get_absolute_url()
    assert (project.task, project.lm_blocks, project.lm_heads, project.grid_prefixes[-1]) == (
        "lm",
        4,
        8,
        "lm.b3",
    )
    detail = client.get(project.get_absolute_url()).content.decode()
    assert "8.6 billion</strong> parameters across the grids (4 blocks \u00d7 256 experts \u00d7" in detail
    assert "hosts 4 experts by default" in detail and "128.1 MiB to host while training" in detail
    assert "Language modelling" in detail and "window 64, 8 heads" in detail

    config = client.get(f"/api/v1/projects/{project.slug}/config").json()
    parsed = parse_project_config(config)
    assert parsed.task == "lm" and parsed.lm is not None
    assert (parsed.lm.blocks, parsed.lm.seq_len, parsed.lm.window, parsed.lm.heads) == (4, 128, 64, 8)
    assert parsed.lm.corpus == "python-stdlib" and parsed.training.dataset == "python-stdlib"
    assert [g.prefix for g in parsed.grids] == ["lm.b0", "lm.b1", "lm.b2", "lm.b3"]
    assert all(g.grid == [16, 16] and g.hidden_dim == 1024 and g.expert_class == "ffn" for g in parsed.grids)
    assert parsed.expert == parsed.grids[0] and parsed.expert_grids == parsed.grids


def test_the_researchers_own_text_is_a_corpus(make_project, client) -> None:
    project = make_project(**{**LM_FIELDS, "lm_corpus": "own", "hidden_size": 64, "grid_shape": "2x2"})
    parsed = parse_project_config(client.get(f"/api/v1/projects/{project.slug}/config").json())
    assert parsed.lm is not None and parsed.lm.corpus == "own"
    assert "--text" in client.get(project.get_absolute_url()).content.decode()


def test_a_classifier_keeps_its_one_grid_and_its_dataset(project, client) -> None:
    config = client.get(f"/api/v1/projects/{project.slug}/config").json()
    parsed = parse_project_config(config)
    assert (parsed.task, parsed.lm, parsed.training.dataset) == ("classification", None, "digits")
    assert parsed.grids == [parsed.expert] and parsed.expert.prefix == "ffn"
    assert (
        project.scale.blocks == 1
        and "Language" not in client.get(project.get_absolute_url()).content.decode()
    )


def test_a_classifier_form_may_leave_the_language_model_fields_out(
    researcher, logged_in, project_fields
) -> None:
    response = logged_in(researcher).post(reverse("projects:create"), {**project_fields, "launch": "on"})
    assert response.status_code == 302
    assert Project.objects.get().task == "classification" and Project.objects.get().lm_blocks == 2


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"lm_heads": 6}, "lm_heads", "not a multiple of 6 heads"),
        ({"lm_window": 256}, "lm_window", "at most the sequence length"),
        ({"lm_blocks": 64, "grid_shape": "32x33"}, "lm_blocks", "at most 65,536 in all"),
        ({"expert_architecture": "transformer"}, "expert_architecture", "feed-forward"),
        ({"lm_blocks": 0}, "lm_blocks", "greater than or equal to 1"),
        ({"lm_blocks": 65}, "lm_blocks", "less than or equal to 64"),
        ({"lm_blocks": "1e9"}, "lm_blocks", "whole number"),
        ({"lm_blocks": "9" * 400}, "lm_blocks", ""),
        ({"lm_seq_len": "-8"}, "lm_seq_len", ""),
        ({"lm_seq_len": 5000}, "lm_seq_len", "less than or equal to 4096"),
        ({"lm_heads": ""}, "lm_heads", "A language model needs this"),
        ({"lm_corpus": "/etc/passwd"}, "lm_corpus", "valid choice"),
        ({"task": "rm -rf"}, "task", "valid choice"),
        ({"hidden_size": "1024\x00"}, "hidden_size", ""),
    ],
)
def test_bad_language_model_fields_get_clear_field_errors(
    researcher, logged_in, lm_form, changes, field, words
) -> None:
    errors = field_errors(logged_in(researcher).post(reverse("projects:create"), {**lm_form, **changes}))
    assert field in errors and words in " ".join(errors[field]), errors
    assert not Project.objects.exists()


def test_editing_checks_the_same_rules(researcher, logged_in, make_project) -> None:
    project = make_project(**{**LM_FIELDS, "hidden_size": 64, "grid_shape": "2x2", "lm_heads": 4})
    client = logged_in(researcher)
    url = reverse("projects:edit", args=[project.slug])
    data = {**client.get(url).context["form"].initial, "lm_heads": 5}
    data = {k: v for k, v in data.items() if v is not None}
    assert "lm_heads" in field_errors(client.post(url, data))
    assert client.post(url, {**data, "lm_heads": 8, "lm_blocks": 3}).status_code == 302
    project.refresh_from_db()
    assert (project.lm_heads, project.lm_blocks, project.scale.total_experts) == (8, 3, 12)


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(
        ["task", "lm_corpus", "lm_blocks", "lm_seq_len", "lm_window", "lm_heads", "grid_shape"]
    ),
    value=st.text(max_size=40) | st.integers(min_value=-(10**30), max_value=10**30).map(str),
)
def test_hostile_form_values_never_break_the_form(researcher, logged_in, lm_form, name, value) -> None:
    response = logged_in(researcher).post(reverse("projects:create"), {**lm_form, name: value})
    assert response.status_code in (200, 302)
    if response.status_code == 200:
        assert response.context["form"].errors
    Project.objects.all().delete()


def test_the_demo_seeds_a_language_model_a_laptop_can_serve(client) -> None:
    from io import StringIO

    from django.core.management import call_command

    for _ in range(2):
        call_command("seed_demo", stdout=StringIO())
    digits, lm = Project.objects.get(slug="demo-digits"), Project.objects.get(slug="demo-lm")
    assert (digits.task, lm.task, lm.status) == ("classification", "lm", "active")
    assert lm.scale.total_experts == 8 and lm.scale.total_parameters < 10**6 and lm.lm_seq_len == 64
    parsed = parse_project_config(client.get("/api/v1/projects/demo-lm/config").json())
    assert [g.prefix for g in parsed.grids] == ["lm.b0", "lm.b1"] and parsed.lm is not None
