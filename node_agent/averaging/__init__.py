"""Decentralized averaging: DHT matchmaking and butterfly all-reduce over the WebRTC pool (`averager`), and
state download between peers (`state_download`)."""

from node_agent.averaging.averager import AveragingError, AveragingOptions, DecentralizedAverager, RoundReport

__all__ = ["AveragingError", "AveragingOptions", "DecentralizedAverager", "RoundReport"]
