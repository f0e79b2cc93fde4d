"""Typed rows for a ``results.json`` written before runs stored their rows.

Such a file has the flat ``metrics`` only. :func:`reconstruct_rows` does not parse the keys:
it makes every row the run's config could have produced, with the same key functions the
evaluation uses (:func:`~sslpoison.eval.backdoor.metric_key`, ``zs_key``, ``probe_key``, the
indiscriminate attacks' and the detectors' own), and keeps those whose key is among the
metrics, with its value. Keys no candidate makes stay in ``metrics`` only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sslpoison.attacks import ATTACKS
from sslpoison.attacks.indiscriminate import Rows as PoisoningRows
from sslpoison.defenses import DEFENSES
from sslpoison.detectors import DETECTORS
from sslpoison.eval.backdoor import ACC, ASR, FP, metric_key
from sslpoison.eval.downstream import EvalConfig
from sslpoison.eval.encoder import probe_key
from sslpoison.eval.rows import ATTACKED, CLEAN, ON_CLEAN, Metric, Row
from sslpoison.eval.zero_shot import TARGETED_SUCCESS, ZERO_SHOT, ZS_ACC, ZS_ASR, zs_key
from sslpoison.experiment.results import detect_stage_name
from sslpoison.hooks import Hook

POISONING_VICTIMS = ("linear", "features", "finetune")


def poisoning_metrics() -> list[Metric]:
    """What the downstream-data attacks of :data:`~sslpoison.attacks.ATTACKS` measure, each
    once."""
    kinds = [kind for kind in ATTACKS.values() if kind.hook is Hook.DOWNSTREAM_DATA]
    return list(dict.fromkeys(m for kind in kinds for m in kind.metrics))


def _backdoor(datasets, probes, encoders, targets) -> Iterator[Row]:
    for dataset in datasets:
        for i, probe in enumerate(probes):
            suffix = "" if i == 0 else f"_{probe}"
            for encoder in encoders:
                for target in (None, *targets):
                    for metric in (ACC.name, ASR.name, FP.name):
                        key = metric_key(encoder, dataset, metric, target) + suffix
                        yield Row(dataset, encoder, probe, metric, 0, key, target)


def _zero_shot(datasets, probe) -> Iterator[Row]:
    for dataset in datasets:
        for role in (CLEAN, ATTACKED):
            for metric in (ZS_ACC.name, ZS_ASR.name, TARGETED_SUCCESS.name):
                yield Row(dataset, role, ZERO_SHOT, metric, 0, zs_key(role, dataset, metric))
            key = zs_key(role, dataset, f"{TARGETED_SUCCESS.name}_probe")
            yield Row(dataset, role, probe, TARGETED_SUCCESS.name, 0, key)


def _encoder(datasets, probes, baselines) -> Iterator[Row]:
    for dataset in datasets:
        for who in (CLEAN, *baselines):
            for probe in probes:
                yield Row(dataset, who, probe, ACC.name, 0, probe_key(dataset, probe, who))


def _poisoning(datasets, countermeasures) -> Iterator[Row]:
    metrics = poisoning_metrics()
    for dataset in datasets:
        rows = PoisoningRows(dataset)
        for victim in POISONING_VICTIMS:
            for cm in (None, *countermeasures):
                for metric in metrics:
                    rows.add(metric, 0, victim, cm)
        yield from rows.rows


def _detectors(detectors: list[dict[str, Any]], stages: dict[str, Any]) -> Iterator[Row]:
    for spec in detectors:
        kind = DETECTORS.get(spec.get("name"))
        try:
            detector = kind.model_validate(spec) if kind is not None else None
        except ValueError:  # a config of an older schema: no rows from it
            detector = None
        for role in (CLEAN, ATTACKED):
            record = stages.get(detect_stage_name(str(spec.get("name")), role))
            if detector is not None and isinstance(record, dict):
                try:
                    yield from detector.rows(role, record)
                except (KeyError, TypeError, ValueError):
                    continue


def candidate_rows(config: dict[str, Any], stages: dict[str, Any]) -> list[Row]:
    """Every row a run of ``config`` (its ``results.json`` form) could have measured, values 0
    (detectors' rows: from their stage records in ``stages``)."""
    defaults = EvalConfig()
    ev = config.get("eval") or {}
    datasets = list(ev.get("datasets") or defaults.datasets)
    probes = list(ev.get("probes") or defaults.probes)
    baselines = list(ev.get("baselines", defaults.baselines))
    attack = config.get("attack") or {}
    found: list[Row] = []
    if attack:
        encoders = [CLEAN, ATTACKED]
        for d in config.get("defenses") or []:
            encoders += [d["name"]] + ([f"{d['name']}{ON_CLEAN}"] if d.get("control") else [])
        targets = [
            t["target_class"]
            for t in attack.get("targets") or []
            if isinstance(t, dict) and isinstance(t.get("target_class"), str)
        ]
        found += _backdoor(datasets, probes, encoders, targets)
        zs_datasets = [*datasets, *([attack["dataset"]] if attack.get("dataset") else [])]
        found += _zero_shot(dict.fromkeys(zs_datasets), probes[0])
        # Countermeasures: the attack's own list (before they became defenses), or the
        # downstream-data defenses.
        cms = [c["name"] for c in attack.get("countermeasures") or [] if isinstance(c, dict)]
        for d in config.get("defenses") or []:
            kind = DEFENSES.get(d.get("name")) if isinstance(d, dict) else None
            if kind is not None and kind.hook is Hook.DOWNSTREAM_DATA:
                cms.append(d["name"])
        found += _poisoning(datasets, cms)
    found += _encoder(datasets, probes, baselines)
    found += _detectors(config.get("detectors") or [], stages)
    return found


def reconstruct_rows(
    config: dict[str, Any], metrics: dict[str, float | int], stages: dict[str, Any]
) -> list[Row]:
    """The rows of an old ``results.json`` (see the module doc), in the order of its
    ``metrics``; the first candidate made under a key wins."""
    by_key: dict[str, Row] = {}
    for row in candidate_rows(config, stages):
        if row.key in metrics and row.key not in by_key:
            by_key[row.key] = row
    return [
        Row(r.dataset, r.encoder, r.probe, r.metric, metrics[k], k, r.target, r.setting)
        for k in metrics
        if (r := by_key.get(k)) is not None
    ]


__all__ = ["candidate_rows", "reconstruct_rows"]
