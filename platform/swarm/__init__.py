"""Swarm: connects the portal to project swarms without putting it on the training path.

Join codes and credentials, agent distribution, signed telemetry, the DHT observer and the swarm pages.
"""
