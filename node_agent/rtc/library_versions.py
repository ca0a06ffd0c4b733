"""The aiortc, aioice and pyOpenSSL versions the agent's patches were written and tested against.

`sctp_tuning`, `transmit_shortcut`, `large_records`, `record_probing`, `host_candidates`, `direct_first` and
`fingerprint` reach into private parts of these libraries (methods rebound to other globals, wrapped
functions, classes swapped on live objects). A release may rename or change any of them without notice, and
a patch that no longer fits would fail silently or corrupt a transfer. So the versions are pinned exactly in
`pyproject.toml` (the agent wheel carries the pins: volunteers' pip installs exactly these), and the patches
refuse to install on others.

Upgrading: change the pins here and in `pyproject.toml` together, then run
`tests/node_agent/rtc/test_aiortc_guards.py`, which fails loudly where a patched place changed.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping

#: Distribution -> the exact version the patches were tested with (the `==` pins in pyproject.toml).
TESTED_VERSIONS: dict[str, str] = {
    "aiortc": "1.16.0",
    "aioice": "0.13.0",
    "pyOpenSSL": "26.4.0",
}

_checked = False


class UntestedLibraryError(RuntimeError):
    """An installed aiortc/aioice/pyOpenSSL differs from the version the agent's patches were tested with."""


def check_versions(installed: Mapping[str, str | None]) -> None:
    """Raise UntestedLibraryError naming every library whose installed version is not the tested one."""
    wrong = [
        f"{name} {installed.get(name) or 'missing'} (tested: {version})"
        for name, version in TESTED_VERSIONS.items()
        if installed.get(name) != version
    ]
    if wrong:
        pins = " ".join(f"'{name}=={version}'" for name, version in TESTED_VERSIONS.items())
        raise UntestedLibraryError(
            "the WebRTC patches of the node agent were not tested with "
            + ", ".join(wrong)
            + f"; install the tested versions (pip install {pins})"
        )


def installed_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TESTED_VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def require_tested_versions() -> None:
    """Refuse (UntestedLibraryError) to patch libraries of any version but the tested one; checked once."""
    global _checked
    if not _checked:
        check_versions(installed_versions())
        _checked = True
