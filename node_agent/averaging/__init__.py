"""Decentralized averaging: state download (`state_download`) and averaging between peers."""
