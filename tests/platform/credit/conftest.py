"""The swarm tests' agent fixtures (a joined node, signed posts, heartbeat bodies), reused for credit."""

from tests.platform.swarm.conftest import (  # noqa: F401
    agent_wheel_dir,
    join_code,
    joined,
    make_heartbeat,
    node_key,
    signed_post,
    wheel_settings,
)
