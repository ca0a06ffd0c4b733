"""Colearn node agent: joins a project's trustless DHT, hosts experts and trains over WebRTC.

Imports neither Django nor (at import time) torch, so a DHT-only node starts fast and small.
"""

from __future__ import annotations

__version__ = "0.1.0"
