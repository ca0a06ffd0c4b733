"""Decentralized averaging: DHT matchmaking and butterfly all-reduce over the WebRTC pool (`averager`),
DHT records (`records`, no torch: every project node validates them) and state download (`state_download`)
for newcomers, replicas and exports.

Names load lazily, so that importing `node_agent.averaging.records` does not import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node_agent.averaging.averager import (
        AveragingError,
        AveragingOptions,
        DecentralizedAverager,
        RoundReport,
    )

__all__ = ["AveragingError", "AveragingOptions", "DecentralizedAverager", "RoundReport"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from node_agent.averaging import averager

        return getattr(averager, name)
    raise AttributeError(name)
