"""`node-agent` command line: one module per subcommand, each exposing `register(subparsers)`.

Subcommand modules import their heavy dependencies (torch, aiortc) inside their run functions, so
`node-agent --version` and `node-agent bootstrap` stay light.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from node_agent import __version__

# Add a subcommand by creating node_agent/cli/<name>.py with `register(subparsers)` and listing it here.
COMMAND_MODULES: tuple[str, ...] = (
    "bootstrap",
    "dht",
    "serve",
    "train",
    "swarm",
    "join",
    "export",
    "generate",
)


def peer_list(text: str) -> list[str]:
    """An `--initial-peers` value: comma-separated `host:port[/nodeid]` addresses (argparse `type=`)."""
    return [peer for peer in text.split(",") if peer]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="node-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"node-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"node_agent.cli.{name}").register(subparsers)
    return parser


def configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return int(handler(args) or 0)
