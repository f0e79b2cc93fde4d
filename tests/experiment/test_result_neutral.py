"""The one list of config keys that cannot change a result, and the three identities that
leave it out: the output folder's, the stage keys', the store's settings."""

from __future__ import annotations

from sslpoison.configbase import RESULT_NEUTRAL, Config, without_neutral
from sslpoison.experiment.config import ExperimentConfig
from sslpoison.experiment.preflight import run_identity
from sslpoison.results.store import settings_key
from sslpoison.train.engine import STAGE_KEY, TrainConfig


def _config_classes(cls: type[Config]) -> set[type[Config]]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _config_classes(sub)
    return found


def test_each_neutral_key_is_a_field_of_the_experiment_or_its_training():
    fields = set(ExperimentConfig.model_fields) | set(TrainConfig.model_fields)
    assert fields >= RESULT_NEUTRAL


def test_no_config_uses_a_neutral_name_for_something_that_matters():
    """A nested field named like a neutral key would vanish from every identity."""
    owners = {ExperimentConfig, TrainConfig}
    clashes = [
        f"{cls.__name__}.{name}"
        for cls in _config_classes(Config) | {ExperimentConfig}
        if cls not in owners and not issubclass(cls, tuple(owners))
        for name in set(cls.model_fields) & RESULT_NEUTRAL
    ]
    assert clashes == []


def test_neutral_keys_leave_every_identity_unchanged():
    base = ExperimentConfig.model_validate({"name": "x", "pretrain": {"train": {"epochs": 1}}})
    changed = ExperimentConfig.model_validate(
        {
            "name": "x",
            "device": "cpu",
            "threads": 1,
            "cache_dir": "/elsewhere",
            "results_db": False,
            "tracker": {"kind": "tensorboard"},
            "pretrain": {"train": {"epochs": 1, "progress": False, "checkpoint_every": 3}},
        }
    )
    a, b = base.model_dump(mode="json"), changed.model_dump(mode="json")
    assert a != b
    assert run_identity(a) == run_identity(b)
    assert settings_key(a) == settings_key(b)
    assert without_neutral(a) == without_neutral(b)
    key = {STAGE_KEY: "cpu"}
    assert base.pretrain.train.model_dump(context=key) == changed.pretrain.train.model_dump(
        context=key
    )


def test_a_key_that_matters_changes_every_identity():
    a = ExperimentConfig.model_validate({"pretrain": {"train": {"epochs": 1}}})
    b = ExperimentConfig.model_validate({"pretrain": {"train": {"epochs": 2}}})
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    assert run_identity(da) != run_identity(db)
    assert settings_key(da) != settings_key(db)
    key = {STAGE_KEY: "cpu"}
    assert a.pretrain.train.model_dump(context=key) != b.pretrain.train.model_dump(context=key)
