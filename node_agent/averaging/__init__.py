"""Decentralized averaging: DHT matchmaking and butterfly all-reduce over the WebRTC pool; state download
(`state_download`) for newcomers, replicas and exports."""

from node_agent.averaging.averager import AveragingError, AveragingOptions, DecentralizedAverager, RoundReport

__all__ = ["AveragingError", "AveragingOptions", "DecentralizedAverager", "RoundReport"]
