"""What every robustness case asserts, and the tiny run they start from."""

from __future__ import annotations

from pathlib import Path

from tiny_runs import TINY_RUN

__all__ = ["TINY_RUN", "assert_user_error", "trained_stages"]


def assert_user_error(code: int, err: str, *names: object) -> str:
    """A user error: exit 2 and exactly one stderr line, ``error: ...``, naming each of
    ``names`` (a file, a key); returns the line."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert str(name) in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


def trained_stages(cache: Path) -> list[Path]:
    """The pre-training stage folders in ``cache`` (training started if any exist)."""
    return sorted((cache / "pretrain").glob("*")) if (cache / "pretrain").exists() else []
