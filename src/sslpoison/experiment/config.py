"""The experiment schema: what one `sslpoison run CONFIG.yaml` does.

Every section is a frozen pydantic model with unknown keys forbidden, so a typo or a bad
value fails at load time with the dotted key in the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveInt,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from sslpoison.attacks import ATTACKS, AttackConfig, Hook, strikes
from sslpoison.configbase import Config, CountOrShare, format_validation_error
from sslpoison.data.shards import WEBDATASET
from sslpoison.defenses import DEFENSES, DefenseConfig
from sslpoison.detectors import DETECTORS, DetectorConfig
from sslpoison.errors import ConfigError
from sslpoison.eval.downstream import EvalConfig
from sslpoison.hooks import CheckContext
from sslpoison.models.export import ExportConfig
from sslpoison.models.sources import EncoderSource
from sslpoison.paths import HOME_CACHE, configured_path
from sslpoison.ssl.pretrain import PretrainConfig
from sslpoison.train.tracker import TrackerConfig
from sslpoison.yamlio import load_yaml, read_yaml

#: The keys of ``data:`` for pairs streamed from shards (``dataset: webdataset``).
STREAM_KEYS = ("shards", "shuffle_buffer", "workers")


def registered(value: Any, registry: dict[str, type[Config]], base: type[Config]) -> Any:
    """``value`` (a mapping) validated as the config its ``name`` picks from ``registry``
    (looked up when validated, so an entry registered later is valid at once); an instance of
    ``base`` as it is."""
    if isinstance(value, base):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("model_type", "expected a mapping of keys")
    if "name" not in value:
        raise PydanticCustomError(
            "union_tag_not_found", "the key 'name' is missing", {"discriminator": "'name'"}
        )
    if value["name"] not in registry:
        known = ", ".join(repr(name) for name in registry)
        raise PydanticCustomError(
            "union_tag_invalid", "unknown name", {"tag": value["name"], "expected_tags": known}
        )
    return registry[value["name"]].model_validate(value)


#: One entry of ``defenses:``: a registered defense, by its ``name``.
DefenseEntry = Annotated[
    SerializeAsAny[DefenseConfig],
    WrapValidator(lambda value, _: registered(value, DEFENSES, DefenseConfig)),
]
#: One entry of ``detectors:``: a registered detector, by its ``name``.
DetectorEntry = Annotated[
    SerializeAsAny[DetectorConfig],
    WrapValidator(lambda value, _: registered(value, DETECTORS, DetectorConfig)),
]


__all__ = [
    "GROUPS",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "StageGroup",
    "StageSeeds",
    "load_config",
]

#: The stage groups whose seed a repetition over ``seeds`` can vary (see :class:`StageSeeds`).
StageGroup = Literal["pretrain", "attack", "eval"]
GROUPS: tuple[StageGroup, ...] = ("pretrain", "attack", "eval")


class StageSeeds(Config):
    """The seed of a stage group, where it is not the experiment's ``seed`` (None: ``seed``).

    * ``pretrain``: the clean pre-training — its ``data.subset`` draw, initialisation,
      augmentations and batches — and the untrained ``random_init`` baseline;
    * ``attack``: everything the attacker, the defender and the detectors draw or train: the
      poison choice and the pre-training on the poisoned set (its initialisation and batches
      too), an encoder attack's shadow images, references and training, the downstream
      poisons, each defense (unless it sets its own ``seed``; its control too) and detector;
    * ``eval``: the evaluation — the labelled train subsets and ``test_subset`` draws, the
      probes (their held-out split, initialisation, batches), the victims of a downstream
      attack, the triggered test images' placements and the trigger pictures.

    ``seeds`` + ``vary`` write this section into each repetition's config: the groups that do
    not vary keep the experiment's ``seed``.
    """

    pretrain: int | None = None
    attack: int | None = None
    eval: int | None = None


class DataConfig(Config):
    """The pre-training dataset (labels are never used by pre-training).

    ``root``: the folder holding the dataset's files (or a ``<dataset>`` subfolder of them);
    when given, the files must be there. ``allow_smaller``: a count of pre-training images
    (``subset``, ``attack.shadow``, ``defenses.N.clean``, ``detectors.N.clean``) larger than
    the set takes the whole set, recorded as a warning of the run (by default: an error).
    ``allow_empty_classes``: a class folder without images is kept as an empty class,
    recorded as a warning (by default: an error). ``classes``: pre-train on these classes
    only (indices or names; e.g. a class split whose other classes make the downstream
    task: ``eval.classes``); None: all.
    """

    dataset: str = "fashion-mnist"
    root: str | None = None
    classes: list[int | str] | None = Field(None, min_length=1)
    subset: CountOrShare | None = None  # pre-training images used
    size: PositiveInt | None = None  # resize to size×size
    channels: Literal[1, 3] | None = None
    allow_smaller: bool = False
    allow_empty_classes: bool = False
    # dataset: webdataset (CLIP pairs streamed from tar shards, sslpoison.data.shards)
    shards: str | list[str] | None = None  # "DIR/{00000..00331}.tar", a glob, paths
    shuffle_buffer: PositiveInt = 5000  # samples held for shuffling (per rank)
    workers: NonNegativeInt = 4  # DataLoader processes decoding shards (per rank)

    @model_serializer(mode="wrap")
    def _without_stream_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The streaming keys appear only with ``dataset: webdataset`` (the other configs
        dump, and are known by, exactly what they were before those keys)."""
        data = handler(self)
        if self.dataset != WEBDATASET:
            for key in STREAM_KEYS:
                data.pop(key, None)
        return data


class ExperimentConfig(Config):
    """A whole experiment: data → [poison] → pre-train → [attack] → [defend] → [detect] →
    evaluate.

    ``encoder`` brings the clean encoder instead of pre-training one
    (:class:`~sslpoison.models.sources.EncoderSource`; it takes precedence over
    ``pretrain``, and the pre-training and downstream images are fitted to its input).
    ``attack.name`` picks the attack from :data:`sslpoison.attacks.ATTACKS`, each entry of
    ``defenses`` its defense from :data:`sslpoison.defenses.DEFENSES` and each entry of
    ``detectors`` its detector from :data:`sslpoison.detectors.DETECTORS` (looked up when the
    config is validated, so a registered one is valid at once). A defense acts where its
    hook point is: a pre-training-data defense filters the (poisoned) pre-training set and
    the encoder pre-trained again on what it keeps is evaluated next to the others; an
    encoder defense turns the attacked encoder into another, evaluated next to it; a
    downstream-data defense sanitizes the labelled training sets the attack poisoned. Every
    entry of ``detectors`` judges the clean and the attacked encoder. ``export`` writes
    encoders of the run in other formats at its end
    (:class:`~sslpoison.models.export.ExportConfig`).
    """

    name: str = "experiment"
    seed: int = 0
    # repeat the whole experiment once per seed, into OUT/seed-<s>/, then aggregate
    seeds: list[int] | None = Field(None, min_length=1)
    # the stage groups a repetition's seed varies; the others keep `seed` (see StageSeeds)
    vary: list[StageGroup] = Field(default_factory=lambda: list(GROUPS), min_length=1)
    stage_seeds: StageSeeds | None = None  # a group's own seed (None: `seed`)
    device: str = "auto"
    threads: PositiveInt | None = None  # CPU threads, set by `sslpoison run`; None: default
    cache_dir: str | None = None  # stage cache; default $SSLPOISON_CACHE or ~/.cache/sslpoison
    # results store: default $SSLPOISON_RESULTS or runs/results.sqlite; false: none
    results_db: str | Literal[False] | None = None
    tracker: TrackerConfig | None = None  # per-epoch losses and metrics to TensorBoard
    data: DataConfig = Field(default_factory=DataConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    encoder: EncoderSource | None = None
    attack: SerializeAsAny[AttackConfig] | None = None
    defenses: list[DefenseEntry] = Field(default_factory=list)
    detectors: list[DetectorEntry] = Field(default_factory=list)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: list[ExportConfig] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _without_unused_sections(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``encoder`` and ``export`` only when set, so that a run's identity (a hash of its
        config) is what it was before they existed."""
        data = handler(self)
        if data.get("encoder") is None:
            data.pop("encoder", None)
        if not data.get("export"):
            data.pop("export", None)
        return data

    @field_validator("attack", mode="wrap")
    @classmethod
    def _registered_attack(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """``attack:`` validated as the config of the attack its ``name`` names."""
        if value is None:
            return handler(value)
        return registered(value, ATTACKS, AttackConfig)

    @model_validator(mode="before")
    @classmethod
    def _pretraining_root_for_eval(cls, raw: Any) -> Any:
        """``data.root`` also locates the pre-training dataset when it is evaluated."""
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict) and raw["data"].get("root"):
            ev = raw.get("eval")
            if ev is None or isinstance(ev, dict):
                ev = dict(ev or {})
                roots = dict(ev.get("roots") or {})
                roots.setdefault(raw["data"].get("dataset", "fashion-mnist"), raw["data"]["root"])
                raw = {**raw, "eval": {**ev, "roots": roots}}
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        self.pretrain.checked_method_args()
        for key in ("seeds", "vary"):
            values = getattr(self, key) or []
            for i, v in enumerate(values):
                if v in values[:i]:
                    raise ValueError(f"{key}.{i}: {v!r} is listed twice")
        if self.seeds is not None and self.stage_seeds is not None:
            for group in self.vary:
                if getattr(self.stage_seeds, group) is not None:
                    raise ValueError(
                        f"stage_seeds.{group}: pinned, but vary lists {group!r}: a repetition "
                        f"over seeds could not vary it (drop one of the two)"
                    )
        context = self.check_context()
        if self.attack is not None:
            self.attack.check(context)
        if self.pretrain.image_text:
            unused = [
                k
                for k in ("recipe", "jitter", "blur")
                if getattr(self.pretrain.augment, k) is not None
            ]
            if unused:
                raise ValueError(
                    f"pretrain.augment.{unused[0]}: CLIP pre-training only takes crop_scale "
                    f"(its captions must stay true of the image)"
                )
        if self.data.dataset == WEBDATASET:
            self._check_streamed()
        else:
            given = [k for k in STREAM_KEYS if k in self.data.model_fields_set]
            if given:
                raise ValueError(f"data.{given[0]}: only for dataset: {WEBDATASET}")
        for defense in self.defenses:
            defense.check(context)
        for section in ("defenses", "detectors"):
            names = [d.name for d in getattr(self, section)]
            for i, n in enumerate(names):
                if n in names[:i]:
                    raise ValueError(f"{section}.{i}.name: {n!r} is listed twice")
        return self

    def check_context(self) -> CheckContext:
        """What the ``check`` of the attack and of each defense sees of this experiment."""
        attack = self.attack
        return CheckContext(
            pretraining=self.data.dataset,
            eval_datasets=tuple(self.eval.datasets),
            method=self.pretrain.method,
            image_text=self.pretrain.image_text,
            encoder_given=self.encoder is not None,
            attack=attack.name if attack is not None else None,
            attack_hook=attack.hook if attack is not None else None,
        )

    def seed_of(self, group: StageGroup) -> int:
        """The seed of stage group ``group``: ``stage_seeds.<group>``, else ``seed``."""
        pinned = getattr(self.stage_seeds, group) if self.stage_seeds is not None else None
        return self.seed if pinned is None else pinned

    def _check_streamed(self) -> None:
        """``data`` of pairs streamed from shards, and what such a run cannot do: anything
        but CLIP pre-training, and the stages that take pre-training images in memory."""
        data = self.data
        if not data.shards:
            raise ValueError(
                f"data.shards: dataset {WEBDATASET} streams tar shards; name them, e.g. "
                f'"/data/cc3m/{{00000..00331}}.tar"'
            )
        if data.size is None:
            raise ValueError(f"data.size: the images of {WEBDATASET} shards differ in size; set it")
        for key in ("root", "subset"):
            if getattr(data, key) is not None:
                raise ValueError(
                    f"data.{key}: not for dataset: {WEBDATASET} (list fewer shards for a subset)"
                )
        if not self.pretrain.image_text:
            raise ValueError(
                f"pretrain.method: data.dataset {WEBDATASET} streams image–caption pairs for "
                f"CLIP; set pretrain.method to clip (got {self.pretrain.method!r})"
            )
        needs = [("defenses", self.defenses), ("detectors", self.detectors)]
        needs.append(("attack", strikes(self.attack, Hook.ENCODER)))
        for key, used in needs:
            if used:
                raise ValueError(
                    f"{key}: takes images of the pre-training set in memory, which "
                    f"data.dataset {WEBDATASET} streams; not available with streamed pairs"
                )

    def resolved_cache_dir(self) -> Path:
        """``cache_dir``, else ``$SSLPOISON_CACHE``, else ``~/.cache/sslpoison/stages``."""
        return configured_path(self.cache_dir, "SSLPOISON_CACHE", HOME_CACHE / "stages")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b.c=VALUE"`` → (["a", "b", "c"], VALUE parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key")
    path = key.strip().split(".")
    if any(not part for part in path):
        raise ConfigError(f"--set {item!r}: empty part in the key {key.strip()!r}")
    return path, load_yaml(raw, f"--set {item!r}")


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` items in order; a number in the path indexes a list
    (``defenses.0.clean=0.1``)."""
    for item in overrides:
        path, value = parse_override(item)
        node: Any = raw
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {item!r}: {part!r} is not an index of that list")
                if last:
                    node[int(part)] = value
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {path[depth - 1]!r} is not a section")
            if last:
                node[part] = value
                break
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
    return raw


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment (or the defaults when ``path`` is None), apply ``--set``s.

    A file must hold a mapping of keys: an empty file (or one of comments only) is refused
    rather than run as the default experiment.

    Raises:
        ConfigError: naming the file or the key (see :func:`sslpoison.yamlio.load_yaml`).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        raw = read_yaml(p)
        if raw is None or raw == {}:
            raise ConfigError(
                f"{p}: the config is empty; write the keys to change (see configs/), "
                "or start from a preset"
            )
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys")
    raw = apply_overrides(raw, list(overrides))
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
