"""The ``classes`` filter of the pre-training data and of each downstream dataset."""

from __future__ import annotations

import pytest

from sslpoison.eval.downstream import Downstream, EvalConfig
from sslpoison.experiment.config import DataConfig, ExperimentConfig
from sslpoison.experiment.stages import pretraining_data


def test_a_class_split_gives_the_requested_classes_on_each_side():
    data = pretraining_data(DataConfig(dataset="synthetic", classes=[0, 1]), False)
    full = pretraining_data(DataConfig(dataset="synthetic"), False)
    assert data.num_classes == 2 and set(data.labels.tolist()) == {0, 1}
    assert len(data) == int((full.labels < 2).sum())
    cfg = EvalConfig(datasets=["synthetic"], classes={"synthetic": [3, 2]}, labelled=40)
    downstream = Downstream(cfg, data.image_size, data.channels)
    for split in (downstream.train("synthetic"), downstream.test("synthetic")):
        assert split.classes == [full.classes[3], full.classes[2]]
        assert set(split.labels.tolist()) == {0, 1}
    test = downstream.split("synthetic", "test")
    whole = Downstream(EvalConfig(datasets=["synthetic"]), data.image_size, data.channels)
    original = whole.split("synthetic", "test")
    assert len(test) == int(((original.labels == 3) | (original.labels == 2)).sum())
    assert (test.labels == 0).sum() == (original.labels == 3).sum()  # 3 → 0, 2 → 1


def test_classes_of_a_dataset_that_is_not_evaluated_is_refused_at_load_time():
    with pytest.raises(ValueError, match=r"eval\.classes\.digits"):
        ExperimentConfig.model_validate(
            {"eval": {"datasets": ["synthetic"], "classes": {"digits": [1]}}}
        )
