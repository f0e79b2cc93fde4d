"""The Python of the docs is true to the code: the guide's example runs (on the synthetic
dataset), and the snippets of docs/extending.md define attacks and a defense that do what
they say; every relative link of the README and docs/ resolves to a file."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide.md"
EXTENDING = ROOT / "docs" / "extending.md"


def python_blocks(section: str, page: Path) -> list[str]:
    """The ```python blocks of ``page``'s section whose heading is ``## {section}``."""
    text = page.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], re.S)


def run(code: str, namespace: dict, page: Path) -> None:
    """Execute the docs' code as a user would (without this module's ``__future__`` imports)."""
    exec(compile(code, str(page), "exec", dont_inherit=True), namespace)


@pytest.mark.slow
def test_the_python_example_attacks_defends_and_evaluates(capsys):
    (code,) = python_blocks("From Python: attack, defend, evaluate", GUIDE)
    line = 'DATASET, TARGET = "fashion-mnist", "Ankle boot"'
    labelled = "labelled=2000"  # of Fashion-MNIST's 60 000; the synthetic set has 512
    assert line in code and labelled in code
    code = code.replace(labelled, "labelled=256")
    namespace: dict = {}
    run(code.replace(line, 'DATASET, TARGET = "synthetic", "vertical"'), namespace, GUIDE)
    rows = {row.key: row.value for row in namespace["result"].rows}
    per_encoder = ("top_class", "top_share", "ref_target")
    assert set(rows) == {
        "synthetic/ca",
        "synthetic/asr_b",
        "synthetic/ba",
        "synthetic/asr",
        "distill/synthetic/ba",
        "distill/synthetic/asr",
        "synthetic/asr_other_trigger",  # the null control: another trigger, same place
        "synthetic/asr_other_trigger_b",
        "distill/synthetic/asr_other_trigger",
        *(f"synthetic/{m}_b" for m in per_encoder),
        *(f"synthetic/{m}" for m in per_encoder),
        *(f"distill/synthetic/{m}" for m in per_encoder),
    }
    assert rows["synthetic/asr"] > rows["synthetic/asr_b"]
    assert "distill" in capsys.readouterr().out


class MyTask(nn.Module):
    """A stand-in task for the encoder-attack snippet: keep the features where they were."""

    def __init__(self, encoder: nn.Module, targets) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images.float() / 255).pow(2).mean()


def test_the_attack_snippets_strike_where_they_say(monkeypatch):
    from sslpoison.attacks import ATTACKS, Hook
    from sslpoison.data.synthetic import synthetic
    from sslpoison.eval.downstream import Downstream, EvalConfig
    from sslpoison.hooks import CheckContext
    from sslpoison.models import build_backbone

    namespace: dict = {"MyTask": MyTask}
    monkeypatch.setattr("sslpoison.attacks.ATTACKS", dict(ATTACKS))  # the snippet registers
    for code in python_blocks("Adding an attack", EXTENDING):
        run(code, namespace, EXTENDING)
    data = synthetic(n=64, num_classes=4, size=16, channels=1, seed=0, split="train")
    data.name = "synthetic"
    downstream = Downstream(EvalConfig(datasets=["synthetic"]), 16, 1)

    corner = namespace["CornerPatch"](count=10)
    assert corner.hook is Hook.PRETRAINING_DATA
    context = CheckContext("synthetic", ("synthetic",), "simclr", image_text=False)
    corner.check(context)
    with pytest.raises(ValueError, match=r"pretrain\.method: corner_patch poisons images without"):
        corner.check(replace(context, method="clip", image_text=True))
    with pytest.raises(ValueError, match="encoder: corner_patch poisons the pre-training data"):
        corner.check(replace(context, encoder_given=True))  # the hook point's own check
    poisoned = corner.poison_pretraining(data, downstream, seed=0)
    assert poisoned.indices.numel() == 10 and poisoned.corners.tolist() == [[0, 0]] * 10
    changed = (poisoned.data.images != data.images).flatten(1).any(1).nonzero().squeeze(1)
    assert set(changed.tolist()) <= set(poisoned.indices.tolist())
    (target,) = corner.backdoor_targets(data, downstream)
    assert (target.dataset, target.class_name) == ("synthetic", data.classes[0])

    attack = namespace["MyEncoderAttack"](
        shadow=32,
        targets=[{"dataset": "synthetic", "target_class": "vertical"}],
        train={"epochs": 1, "batch_size": 16, "progress": False},
    )
    assert attack.hook is Hook.ENCODER
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", width=0.125, in_channels=1)
    shadow = attack.shadow_subset(data)
    targets = attack.prepare_targets(encoder, shadow, attack.backdoor_targets(data, downstream))
    assert targets[0].references.shape == (3, 1, 16, 16)  # the default: 3 references
    done = attack.run(encoder, shadow, targets)
    assert len(done.fit.losses) == 1 and done.record == {"shadow": 32}
    assert namespace["LabelFlip"]().hook is Hook.DOWNSTREAM_DATA


def test_the_docs_link_only_files_of_the_repository():
    """Every link of README.md and docs/*.md is relative and names a file of the repository
    (anchors are not checked)."""
    root = README.parent
    pages = [README, *sorted(root.joinpath("docs").glob("*.md"))]
    assert {GUIDE, EXTENDING, ROOT / "docs" / "design.md", ROOT / "docs" / "reference.md"} <= set(
        pages
    )
    for page in pages:
        for target in re.findall(r"\]\(([^)]+)\)", page.read_text()):
            assert "://" not in target, f"{page.name}: {target}"
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(root) and path.exists(), f"{page.name}: {target}"


def test_the_defense_snippet_filters_what_it_says(monkeypatch):
    from sslpoison.data.synthetic import synthetic
    from sslpoison.defenses import DEFENSES
    from sslpoison.eval.metrics import filter_scores
    from sslpoison.models import build_backbone

    namespace: dict = {}
    monkeypatch.setattr("sslpoison.defenses.DEFENSES", dict(DEFENSES))  # the snippet registers
    (code,) = python_blocks("Adding a defense", EXTENDING)
    run(code, namespace, EXTENDING)
    data = synthetic(n=64, num_classes=4, size=16, channels=1, seed=0)
    data.images[:3] = 255  # three blank images: the farthest from the rest
    torch.manual_seed(0)
    encoder = build_backbone("resnet10", width=0.125, in_channels=1)
    filtered = namespace["FarFromTheMean"](share=0.05).filter(data, encoder)
    assert filtered.removed == 3 and not filtered.kept[:3].any()
    assert filter_scores(filtered.kept, filtered.scores, torch.arange(3))["poison_auroc"] == 1.0
    from sslpoison import defenses

    assert defenses.DEFENSES["far_from_mean"] is namespace["FarFromTheMean"]
