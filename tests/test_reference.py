"""docs/reference.md is generated from the config models (scripts/gen_reference.py) and is
never stale: a field added to any section changes the page, and the check says so."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import Field

ROOT = Path(__file__).parents[1]


def generator():
    path = ROOT / "scripts" / "gen_reference.py"
    spec = importlib.util.spec_from_file_location("gen_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_reference_is_what_the_models_generate():
    gen = generator()
    assert gen.main(["--check"]) == 0, "docs/reference.md is stale: python scripts/gen_reference.py"


def test_a_field_added_to_the_schema_makes_the_reference_stale(tmp_path, capsys):
    from sslpoison.experiment.config import ExperimentConfig

    class ExperimentConfig(ExperimentConfig):  # the same schema, one field more
        budget_minutes: int = Field(15, description="a field the page does not know yet")

    gen = generator()
    committed = (ROOT / "docs/reference.md").read_text()
    page = gen.render(ExperimentConfig)
    assert page != committed
    assert "| `budget_minutes` | int | `15` | a field the page does not know yet |" in page
    assert "budget_minutes" not in committed
    assert gen.main(["--check"], root=ExperimentConfig) == 1
    assert "stale" in capsys.readouterr().err


def test_every_field_of_every_registered_entry_has_its_row():
    from sslpoison.attacks import ATTACKS
    from sslpoison.defenses import DEFENSES
    from sslpoison.detectors import DETECTORS

    page = (ROOT / "docs/reference.md").read_text()
    for registry in (ATTACKS, DEFENSES, DETECTORS):
        for name, model in registry.items():
            section = page.split(f"\n### `{name}`\n", 1)[1].split("\n#", 1)[0]
            for key in model.model_fields:
                assert f"| `{key}` |" in section, f"{name}.{key}"
