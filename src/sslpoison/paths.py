"""Where the tool keeps things: one rule for every path a config key or an environment
variable can set (the stage cache, the results store, the datasets)."""

from __future__ import annotations

import os
from pathlib import Path

#: The folder under the home directory that holds the cache and downloaded datasets.
HOME_CACHE = Path("~/.cache/sslpoison")


def configured_path(configured: str | os.PathLike | None, env: str, default: Path) -> Path:
    """``configured`` (a config key's value) when set, else ``$env`` when set, else
    ``default``; ``~`` expanded in each."""
    if configured:
        return Path(configured).expanduser()
    value = os.environ.get(env)
    return Path(value).expanduser() if value else Path(default).expanduser()


__all__ = ["HOME_CACHE", "configured_path"]
