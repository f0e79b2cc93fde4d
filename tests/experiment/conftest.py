"""Fixtures of the experiment tests."""

from __future__ import annotations

import pytest
from handmade import write_run


@pytest.fixture
def make_run(tmp_path):
    """``make_run(folder, rows, seed=0, wall=60, **config changes) -> path``: a hand-made run
    folder under ``tmp_path`` (:func:`handmade.write_run`)."""

    def make(folder, rows, seed=0, wall=60.0, **changes):
        return write_run(tmp_path, folder, rows, seed, wall, **changes)

    return make
