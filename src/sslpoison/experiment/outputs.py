"""What a run writes into its folder besides ``results.json``; each function returns the
artifacts it wrote (``{name: path}``).

* :func:`write_backdoor_artifacts` — trigger examples (``trigger-<dataset>-<class>.png``),
  the poisoned indices (``poison.json``), the confusion matrices (``confusion.json``,
  ``confusion-<dataset>-<class>.png``);
* :func:`write_summary` — ``summary.md``, ``defenses.png``, each detector's inverted
  trigger (``<detector>-<encoder>.png``);
* :func:`write_attack_files` — an attack's own files (e.g. ``targeted.json``, poisons);
* :func:`save_models` — the encoders (``encoder``, ``encoder-<defense>``) and the CLIP model
  (``clip``), safetensors + JSON card each;
* :func:`write_exports` — the encoders the config's ``export:`` list asks for, in other
  formats (``export/...``).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch.nn as nn

from sslpoison.attacks import Measured
from sslpoison.detectors import DetectorConfig
from sslpoison.eval.downstream import Downstream
from sslpoison.eval.rows import ATTACKED, CLEAN, Evaluation
from sslpoison.experiment.results import CONFUSION, inverted_trigger
from sslpoison.models import save_encoder
from sslpoison.models.export import ExportConfig, default_role, export_encoder
from sslpoison.models.text import TextConfig, Tokenizer
from sslpoison.poisoning import BackdoorTarget, PoisonedSet
from sslpoison.results.plots import bar_plot, plot_confusions
from sslpoison.ssl.clip import CLIP, save_clip
from sslpoison.utils import atomic_write_json, atomic_write_text

#: A detector's verdict on one encoder: (the detector, the encoder's role, the detect stage's
#: record).
Detection = tuple[DetectorConfig, str, dict[str, Any]]


def file_name(text: str) -> str:
    """``text`` with every run of characters unsafe in a file name replaced by ``_``."""
    return re.sub(r"[^\w.-]+", "_", text)


def write_backdoor_artifacts(
    out: Path,
    targets: list[BackdoorTarget],
    poisoned: PoisonedSet | None,
    evaluation: Evaluation,
    downstream: Downstream,
    seed: int = 0,
) -> dict[str, str]:
    """Trigger examples (on 8 test images of each target's dataset), the poisoned indices,
    and the confusion matrices (JSON + PNG) when the evaluation made them."""
    artifacts: dict[str, str] = {}
    for t in targets:
        test = downstream.split(t.dataset, "test").take(8, seed=seed)
        path = out / file_name(f"trigger-{t.dataset}-{t.class_name}.png")
        artifacts[f"trigger:{t.dataset}/{t.class_name}"] = str(
            t.trigger.save_examples(test.images, path, seed=seed)
        )
    if poisoned is not None:
        atomic_write_json(out / "poison.json", poisoned.record())
        artifacts["poison"] = str(out / "poison.json")
    if evaluation.confusion:
        atomic_write_json(out / "confusion.json", evaluation.confusion)
        artifacts[CONFUSION] = str(out / "confusion.json")
    for name, conf in evaluation.confusion.items():
        for cls, per_encoder in conf["triggered"].items():
            path = out / file_name(f"confusion-{name}-{cls}.png")
            title = f"{name}: triggered test images, target {cls!r}"
            artifacts[f"confusion:{name}/{cls}"] = str(
                plot_confusions(per_encoder, conf["classes"], path, title)
            )
    return artifacts


def write_summary(
    out: Path,
    summary: str,
    panels: dict[str, dict[str, dict[str, float]]] | None,
    title: str,
    detections: list[Detection],
) -> dict[str, str]:
    """``summary.md``; ``defenses.png`` (accuracy and ASR of every encoder, per dataset: the
    ``panels``) when given; each detector's inverted trigger as ``<detector>-<encoder>.png``."""
    atomic_write_text(out / "summary.md", summary)
    artifacts = {"summary": str(out / "summary.md")}
    if panels is not None:
        title = f"{title}: accuracy (CA/BA) and ASR per encoder"
        artifacts["defenses_plot"] = str(bar_plot(panels, "share", out / "defenses.png", title))
    for detector, role, record in detections:
        if record.get("trigger_png"):
            path = out / f"{detector.name}-{role}.png"
            shutil.copyfile(record["trigger_png"], path)
            artifacts[inverted_trigger(detector.name, role)] = str(path)
    return artifacts


def write_attack_files(out: Path, measured: Measured) -> dict[str, str]:
    """An attack's own files: its JSON ``files`` (``{artifact: (file name, content)}``) and
    whatever its ``writers`` write into ``out``."""
    artifacts = {}
    for name, (file, content) in measured.files.items():
        atomic_write_json(out / file, content)
        artifacts[name] = str(out / file)
    for name, write in measured.writers.items():
        artifacts[name] = str(write(out))
    return artifacts


def save_models(
    out: Path,
    encoders: dict[str, nn.Module],
    clips: dict[str, tuple[CLIP, Tokenizer]],
    text: TextConfig,
    card: dict[str, Any],
    keep_clean: bool,
) -> dict[str, str]:
    """The attacked CLIP model (or the only one) as ``clip``; each encoder as ``encoder``
    (the clean or the attacked one) or ``encoder-<name>``, with ``card`` (the config) in
    its JSON. The clean encoder only with ``keep_clean`` (else it stays in the stage cache)."""
    artifacts: dict[str, str] = {}
    config = card["config"]
    if clips:
        model, tokenizer = clips.get(ATTACKED, clips[CLEAN])
        artifacts["clip"] = str(save_clip(model, tokenizer, text, out / "clip", config=config))
    for role, encoder in encoders.items():
        if role == CLEAN and not keep_clean:
            continue
        stem = "encoder" if role in (CLEAN, ATTACKED) else f"encoder-{role}"
        artifacts[stem] = str(save_encoder(encoder, out / stem, **card))
    return artifacts


def write_exports(
    out: Path, exports: list[ExportConfig], encoders: dict[str, nn.Module], defenses: list[str]
) -> dict[str, str]:
    """Each of ``exports`` (an encoder of ``encoders`` by role, by default
    :func:`~sslpoison.models.export.default_role` of them) written under ``out``; artifacts
    ``export:<format>`` (``export:<format>:<role>`` when a role is named)."""
    artifacts: dict[str, str] = {}
    for i, spec in enumerate(exports):
        role = spec.encoder or default_role(list(encoders), defenses)
        if role not in encoders:
            raise ValueError(
                f"export.{i}.encoder: no {role!r} encoder in this run (it has "
                f"{', '.join(encoders)})"
            )
        written = export_encoder(encoders[role], spec.format, spec.target(out), spec.layout)
        name = f"export:{spec.format}" + (f":{spec.encoder}" if spec.encoder else "")
        artifacts[name] = str(written)
    return artifacts
