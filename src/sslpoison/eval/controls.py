"""Which measured number is the null control of which: the pairs an effect is judged by.

A row is identified by its typed fields (:data:`RowId`); :func:`null_controls` pairs each
effect row with the rows that measure the same thing where the attack (or the defense) could
not have acted, when the run has them:

* a backdoor's ASR (and FP, zero-shot ASR, targeted success) on the attacked encoder — the
  same through the **clean** encoder (ASR-B, FP of the clean model, ...);
* the ASR (FP) of the attacked or a defended encoder — its ASR (mean FP) with **other
  triggers**: unseen noise patterns of the same size and placement (``asr_other_trigger``,
  ``fp_other_trigger``), so a backdoor is shown to answer its own trigger;
* a defended encoder's ASR and FP — the same defense **on the clean encoder**
  (``<defense>_on_clean``, ``control: true``);
* an indiscriminate attack's accuracy drop — the drop that as many **clean duplicates** with
  their true labels (the poisons' unmodified base images) cause through the same victim and
  countermeasure (``acc_drop_null``);
* a pre-trained encoder's accuracy (a run without an attack) — the same probe on the
  untrained network (``random_init``) and on raw pixels (``pixels``): what pre-training adds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sslpoison.eval.backdoor import ACC, ASR, ASR_OTHER_TRIGGER, FP, FP_OTHER_TRIGGER
from sslpoison.eval.rows import ATTACKED, CLEAN, ON_CLEAN, Metric, Row
from sslpoison.eval.zero_shot import TARGETED_SUCCESS, ZS_ASR, ZS_ASR_OTHER_TRIGGER

#: A row's identity: (dataset, encoder, probe, metric, target, setting).
RowId = tuple[str | None, str, str, str, str | None, str | None]

#: Encoders that are baselines of an unattacked evaluation, and what they are.
BASELINE_NAMES = {"random_init": "the untrained network", "pixels": "raw pixels"}
BASELINES = tuple(BASELINE_NAMES)
#: Metrics whose base rate is the same number through the clean encoder.
BASE_RATE = (ASR.name, FP.name, ZS_ASR.name, TARGETED_SUCCESS.name)
#: Metric → its other-trigger control on the same encoder.
OTHER_TRIGGER = {
    m.name: other.name
    for m, other in (
        (ASR, ASR_OTHER_TRIGGER), (FP, FP_OTHER_TRIGGER), (ZS_ASR, ZS_ASR_OTHER_TRIGGER)
    )
}  # fmt: skip
#: An accuracy drop (an indiscriminate attack's; a report's CA − BA) and its null control.
ACC_DROP = Metric(
    "acc_drop", "acc. drop", about="CA − BA (same probe); an indiscriminate attack's own"
)
ACC_DROP_NULL = Metric(
    "acc_drop_null", "drop null", about="the drop as many clean duplicates cause (true labels)"
)


def row_id(row: Row) -> RowId:
    """The identity of ``row`` (everything but its value and flat key)."""
    return (row.dataset, row.encoder, row.probe, row.metric, row.target, row.setting)


@dataclass(frozen=True)
class Pairing:
    """An effect row and its null control row, and what the control is, in words."""

    effect: RowId
    control: RowId
    what: str


def _defended(encoder: str) -> bool:
    return encoder not in (CLEAN, ATTACKED, *BASELINES) and not encoder.endswith(ON_CLEAN)


def null_controls(ids: Iterable[RowId]) -> list[Pairing]:
    """Every (effect, null control) pair among the rows ``ids`` (see the module doc), in
    the order the effects come."""
    ids = list(dict.fromkeys(ids))
    present = set(ids)
    pairs = []
    for d, e, p, m, t, s in ids:
        wanted: list[tuple[str, str, str]] = []
        if e == ATTACKED and m in BASE_RATE:
            wanted.append((CLEAN, m, "the clean encoder"))
        if (e == ATTACKED or _defended(e)) and m in OTHER_TRIGGER:
            wanted.append((e, OTHER_TRIGGER[m], "unseen triggers of the same size and place"))
        if _defended(e) and m in (ASR.name, FP.name):
            wanted.append((f"{e}{ON_CLEAN}", m, "the defense on the clean encoder"))
        if e == CLEAN and m == ACC_DROP.name:
            wanted.append((CLEAN, ACC_DROP_NULL.name, "as many clean duplicates, true labels"))
        if e == CLEAN and m == ACC.name and s is None:
            wanted += [
                (b, ACC.name, f"the same probe on {what}") for b, what in BASELINE_NAMES.items()
            ]
        for encoder, metric, what in wanted:
            control = (d, encoder, p, metric, t, s)
            if control in present:
                pairs.append(Pairing((d, e, p, m, t, s), control, what))
    return pairs


__all__ = [
    "ACC_DROP",
    "ACC_DROP_NULL",
    "BASELINES",
    "Pairing",
    "RowId",
    "null_controls",
    "row_id",
]
