"""Pure rules: the expert grid syntax and the project status machine."""

from __future__ import annotations

import pytest

from projects.catalog import (
    DATASETS,
    expert_parameters,
    format_count,
    format_grid_shape,
    grid_size,
    parse_grid_shape,
)
from projects.lifecycle import ProjectStatus, ProjectStatusError, check_transition, is_editable


@pytest.mark.parametrize(
    ("text", "dims"),
    [("16x16", (16, 16)), (" 8 X 8 x 4 ", (8, 8, 4)), ("1024", (1024,)), ("2x2x2x2", (2, 2, 2, 2))],
)
def test_valid_grids_parse(text: str, dims: tuple[int, ...]) -> None:
    assert parse_grid_shape(text) == dims
    assert parse_grid_shape(format_grid_shape(dims)) == dims


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "missing"),
        ("16x", "missing"),
        ("0x4", "between 1 and 1024"),
        ("2000x2", "between 1 and 1024"),
        ("2x2x2x2x2", "1 to 4 dimensions"),
        ("-4x4", "not a whole number"),
        ("4.5x4", "not a whole number"),
    ],
)
def test_invalid_grids_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_grid_shape(text)


def test_grid_size_and_dataset_names_match_the_agent_registry() -> None:
    assert grid_size((16, 16)) == 256
    assert set(DATASETS) == {"digits", "iris", "wine", "breast_cancer"}
    assert DATASETS["digits"].features == 64 and DATASETS["digits"].classes == 10


def test_parameter_counts_match_the_agents_experts() -> None:
    # Counted from node_agent.moe.experts' modules, kept here as numbers: the portal never imports torch.
    assert expert_parameters("ffn", 256) == 526_080
    assert expert_parameters("ffn", 1024) == 8_395_776
    assert expert_parameters("transformer", 1024) == 12_596_224
    assert format_count(expert_parameters("ffn", 1024) * 16 * 16 * 4) == "8.6 billion"
    with pytest.raises(ValueError):
        expert_parameters("lstm", 64)


ALLOWED = {
    ("draft", "active"),
    ("draft", "archived"),
    ("active", "paused"),
    ("active", "archived"),
    ("paused", "active"),
    ("paused", "archived"),
}


@pytest.mark.parametrize("current", ProjectStatus.values)
@pytest.mark.parametrize("target", ProjectStatus.values)
def test_only_the_documented_transitions_are_allowed(current: str, target: str) -> None:
    if (current, target) in ALLOWED:
        check_transition(current, target)
    else:
        with pytest.raises(ProjectStatusError, match="cannot become"):
            check_transition(current, target)


def test_unknown_status_and_editability() -> None:
    with pytest.raises(ProjectStatusError, match="unknown"):
        check_transition("active", "exploded")
    assert is_editable("paused") and not is_editable("archived")
