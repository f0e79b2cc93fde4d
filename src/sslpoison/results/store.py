"""The results store: every run's ``results.json`` indexed in one SQLite database.

``results.json`` stays each run's source of truth; the store is an index over many run
folders, for listing, comparing and reporting (:mod:`~sslpoison.results.compare`,
:mod:`~sslpoison.results.html_report`). Where it is: the config's ``results_db``, else
``$SSLPOISON_RESULTS``, else ``runs/results.sqlite``.

Tables: ``runs`` (one per run folder: the config, metrics, timings, stage records, artifact
paths and provenance as JSON, plus the columns filters use), ``rows`` (the typed result rows,
:class:`~sslpoison.eval.rows.Row`), ``labels`` (the run's defenses, detectors and datasets, for
filters) and ``meta`` (the schema version).

A run is identified by a hash of its folder's absolute path and its ``results.json``'s bytes:
importing a folder again adds nothing, and a new run written into the same folder replaces
the old one (the folder now holds the new run). Each insertion is one ``BEGIN IMMEDIATE``
transaction with a busy timeout, so runs finishing at once wait for each other instead of
failing or losing one. Any SQLite failure (a corrupt file, a lock held past the timeout)
raises :class:`StoreError`, one line naming the database file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sslpoison.configbase import without_neutral
from sslpoison.errors import UserError
from sslpoison.eval.rows import Row
from sslpoison.experiment.provenance import overall_precision, precisions
from sslpoison.experiment.results import is_aggregate, rows_from_json
from sslpoison.paths import configured_path
from sslpoison.results.legacy_rows import reconstruct_rows
from sslpoison.utils import stable_hash

log = logging.getLogger(__name__)

#: ``$SSLPOISON_RESULTS``: the store's path when the config does not set ``results_db``.
ENV = "SSLPOISON_RESULTS"
DEFAULT_PATH = Path("runs") / "results.sqlite"
#: Seconds a writer waits for another one's transaction before giving up.
BUSY_TIMEOUT_S = 60.0
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    folder TEXT NOT NULL,
    name TEXT NOT NULL,
    attack TEXT,
    dataset TEXT,
    seed INTEGER,
    settings TEXT NOT NULL,
    finished TEXT,
    total_s REAL,
    rows_source TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    timings TEXT NOT NULL,
    stages TEXT NOT NULL,
    artifacts TEXT NOT NULL,
    provenance TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_folder ON runs (folder);
CREATE TABLE IF NOT EXISTS rows (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    dataset TEXT, encoder TEXT NOT NULL, probe TEXT NOT NULL, metric TEXT NOT NULL,
    value NOT NULL, key TEXT NOT NULL, target TEXT, setting TEXT,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS labels (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    kind TEXT NOT NULL, value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_kind ON labels (kind, value);
"""

#: The seeds, at any depth (a repetition's ``stage_seeds`` and the ``seeds`` it is one of
#: too: ``vary`` stays); with :data:`~sslpoison.configbase.RESULT_NEUTRAL` left out of a
#: setting.
SEED_KEYS = frozenset({"seed", "seeds", "stage_seeds"})


class StoreError(UserError, RuntimeError):
    """The results store cannot be read or written; the message names its file."""


def store_path(configured: str | os.PathLike | None = None) -> Path:
    """The store's path: ``configured`` (the config's ``results_db``), else
    ``$SSLPOISON_RESULTS``, else ``runs/results.sqlite``."""
    return configured_path(configured, ENV, DEFAULT_PATH)


def without_seeds(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without its ``name``, seeds (:data:`SEED_KEYS`) and the keys that cannot
    change a run's numbers (:data:`~sslpoison.configbase.RESULT_NEUTRAL`)."""
    kept = {k: v for k, v in config.items() if k != "name"}
    return without_neutral(kept, SEED_KEYS)


def settings_key(config: dict[str, Any]) -> str:
    """A hash of everything in ``config`` that changes the numbers except the seeds, and of
    its ``name``: the runs of one setting over several seeds share it."""
    return stable_hash({"name": config.get("name"), "config": without_seeds(config)})


@dataclass
class StoredRun:
    """One run as the store holds it (``id`` is None before it is stored)."""

    uid: str
    folder: str
    config: dict[str, Any]
    metrics: dict[str, float | int]
    rows: list[Row]
    timings: dict[str, float]
    stages: dict[str, Any]
    artifacts: dict[str, str]
    provenance: dict[str, Any]
    rows_source: str  # "results.json", or "reconstructed" for folders older than rows
    id: int | None = None
    labels: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("name", "experiment"))

    @property
    def attack(self) -> str | None:
        return (self.config.get("attack") or {}).get("name")

    @property
    def seed(self) -> int | None:
        return self.provenance.get("seed", self.config.get("seed"))

    @property
    def settings(self) -> str:
        return settings_key(self.config)

    def label(self, kind: str) -> list[str]:
        return [v for k, v in self.labels if k == kind]


def _labels(config: dict[str, Any]) -> list[tuple[str, str]]:
    attack = config.get("attack") or {}
    datasets = [(config.get("data") or {}).get("dataset")]
    datasets += (config.get("eval") or {}).get("datasets") or []
    datasets += [attack.get("dataset")] + [
        t.get("dataset") for t in attack.get("targets") or [] if isinstance(t, dict)
    ]
    found = [("dataset", d) for d in dict.fromkeys(datasets) if isinstance(d, str)]
    for kind in ("defenses", "detectors"):
        for spec in config.get(kind) or []:
            if isinstance(spec, dict) and spec.get("name"):
                found.append((kind[:-1], spec["name"]))
    return found


def _artifact_paths(folder: Path, artifacts: dict[str, str]) -> dict[str, str]:
    """Artifact paths made absolute: a file of the run folder by its name there (the folder
    may have moved since the run), else the path as written (e.g. a stage cache folder)."""
    out = {}
    for name, path in artifacts.items():
        here = folder / Path(path).name
        out[name] = str(here) if here.is_file() else path
    return out


def _legacy_provenance(config: dict[str, Any], stages: dict[str, Any], path: Path) -> dict:
    """What a ``results.json`` without ``provenance`` still tells: the seed, the precision of
    its stages, and when the file was written."""
    mtime = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    used = precisions(stages)
    return {
        "seed": config.get("seed"),
        "precision": overall_precision(used),
        "precisions": used,
        "finished": mtime.isoformat(timespec="seconds"),
        "note": "written before runs recorded their provenance; finished: the file's time",
    }


def read_run(folder: str | os.PathLike) -> StoredRun:
    """The run in ``folder`` (its ``results.json``), as the store keeps it. Folders written
    before ``results.json`` held ``rows`` get rows reconstructed from their metrics and config
    (:mod:`~sslpoison.results.legacy_rows`; keys it cannot type stay in the metrics only)
    and a provenance of the seed alone."""
    folder = Path(folder).resolve()
    path = folder / "results.json"
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"{path}: no results.json ({e.strerror})") from None
    try:
        results = json.loads(blob)
        config, metrics = results["config"], results["metrics"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a results.json ({e})") from None
    if is_aggregate(results):
        raise ValueError(
            f"{path}: the aggregate of a run over seeds, not a run; its runs are the "
            f"seed-<s> folders beside it"
        )
    stages = results.get("stages") or {}
    if "rows" in results:
        try:
            rows, source = rows_from_json(results["rows"]), "results.json"
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    else:
        rows, source = reconstruct_rows(config, metrics, stages), "reconstructed"
    uid = hashlib.sha256(str(folder).encode() + b"\0" + blob).hexdigest()[:32]
    return StoredRun(
        uid=uid,
        folder=str(folder),
        config=config,
        metrics=metrics,
        rows=rows,
        timings=results.get("timings") or {},
        stages=stages,
        artifacts=_artifact_paths(folder, results.get("artifacts") or {}),
        provenance=results.get("provenance") or _legacy_provenance(config, stages, path),
        rows_source=source,
        labels=_labels(config),
    )


@dataclass(frozen=True)
class Filters:
    """Which runs: each a glob (``*``, ``?``) matched against the attack's name, a defense's,
    a dataset's (pre-training, downstream or the attack's) or the preset's (``name``) — all
    given must match; ``ids`` picks runs by their store id."""

    attack: str | None = None
    defense: str | None = None
    dataset: str | None = None
    preset: str | None = None
    ids: tuple[int, ...] = ()

    def where(self) -> tuple[str, list[Any]]:
        clauses, args = ["1"], []
        if self.attack is not None:
            clauses.append("attack GLOB ?")
            args.append(self.attack)
        if self.preset is not None:
            clauses.append("name GLOB ?")
            args.append(self.preset)
        for kind, pattern in (("defense", self.defense), ("dataset", self.dataset)):
            if pattern is not None:
                clauses.append(
                    "EXISTS (SELECT 1 FROM labels l WHERE l.run_id = runs.id "
                    "AND l.kind = ? AND l.value GLOB ?)"
                )
                args += [kind, pattern]
        if self.ids:
            clauses.append(f"id IN ({','.join('?' * len(self.ids))})")
            args += list(self.ids)
        return " AND ".join(clauses), args


class ResultsStore:
    """The store at ``path`` (``":memory:"`` for one held in memory); ``read_only`` opens an
    existing file without ever writing it. Use as a context manager, or :meth:`close`."""

    def __init__(
        self,
        path: str | os.PathLike = DEFAULT_PATH,
        *,
        read_only: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.path = Path(path) if str(path) != ":memory:" else None
        self.where = str(path)
        timeout = BUSY_TIMEOUT_S if timeout is None else timeout
        if self.path is not None and read_only and not self.path.is_file():
            raise StoreError(
                f"results store {self.where}: no such file (runs add themselves to it; "
                f"`sslpoison runs import DIR` indexes existing run folders)"
            )
        with self._errors():
            if self.path is None:
                self.db = sqlite3.connect(":memory:", isolation_level=None)
            elif read_only:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        try:
            with self._errors():
                self.db.execute("PRAGMA foreign_keys = ON")
                self._check_schema(create=not read_only)
        except BaseException:
            self.db.close()
            raise

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's errors (and the file system's) as one :class:`StoreError` line."""
        try:
            yield
        except sqlite3.Error as e:
            raise StoreError(f"results store {self.where}: {e}") from None
        except OSError as e:
            raise StoreError(f"results store {self.where}: {e.strerror or e}") from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (``BEGIN IMMEDIATE``) so that two writers
        wait for each other; rolled back on any error."""
        with self._errors():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                with suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _check_schema(self, create: bool) -> None:
        if create:
            with self._transaction() as db:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
        found = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if found is None or int(found[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"results store {self.where}: schema version {found and found[0]} is not one "
                f"this sslpoison reads ({SCHEMA_VERSION})"
            )

    def add(self, run: StoredRun | str | os.PathLike) -> tuple[int, bool]:
        """Store a run (a :class:`StoredRun` or a run folder); returns (its id, whether it was
        new). A run already stored (same folder, same ``results.json``) is left as it is; an
        older run of the same folder is replaced."""
        if not isinstance(run, StoredRun):
            run = read_run(run)
        with self._transaction() as db:
            found = db.execute("SELECT id FROM runs WHERE uid = ?", (run.uid,)).fetchone()
            if found is not None:
                return found[0], False
            db.execute("DELETE FROM runs WHERE folder = ?", (run.folder,))
            cur = db.execute(
                "INSERT INTO runs (uid, folder, name, attack, dataset, seed, settings, finished,"
                " total_s, rows_source, config, metrics, timings, stages, artifacts, provenance)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.uid, run.folder, run.name, run.attack,
                    (run.config.get("data") or {}).get("dataset"), run.seed, run.settings,
                    run.provenance.get("finished"), run.timings.get("total"), run.rows_source,
                    *(_dumps(getattr(run, k)) for k in (
                        "config", "metrics", "timings", "stages", "artifacts", "provenance"
                    )),
                ),
            )  # fmt: skip
            run_id = cur.lastrowid
            db.executemany(
                "INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, r.dataset, r.encoder, r.probe, r.metric, r.value, r.key, r.target,
                     r.setting)
                    for r in run.rows
                ],
            )  # fmt: skip
            db.executemany(
                "INSERT INTO labels VALUES (?, ?, ?)", [(run_id, k, v) for k, v in run.labels]
            )
        return run_id, True

    def add_folders(self, folders: Iterable[str | os.PathLike]) -> tuple[int, int]:
        """Store the run of each folder; returns (added, already there)."""
        added = same = 0
        for folder in folders:
            _, new = self.add(folder)
            added, same = added + new, same + (not new)
        return added, same

    def runs(self, filters: Filters = Filters()) -> list[StoredRun]:
        """The stored runs ``filters`` picks, oldest first, with their rows."""
        where, args = filters.where()
        with self._errors():
            found = self.db.execute(
                f"SELECT id, uid, folder, rows_source, config, metrics, timings, stages, "
                f"artifacts, provenance FROM runs WHERE {where} ORDER BY id",
                args,
            ).fetchall()
            rows: dict[int, list[Row]] = {}
            for run_id, *fields_ in self.db.execute(
                f"SELECT run_id, dataset, encoder, probe, metric, value, key, target, setting "
                f"FROM rows WHERE run_id IN (SELECT id FROM runs WHERE {where}) "
                f"ORDER BY run_id, rowid",
                args,
            ):
                rows.setdefault(run_id, []).append(Row(*fields_))
            labels: dict[int, list[tuple[str, str]]] = {}
            for run_id, kind, value in self.db.execute(
                f"SELECT run_id, kind, value FROM labels "
                f"WHERE run_id IN (SELECT id FROM runs WHERE {where}) ORDER BY rowid",
                args,
            ):
                labels.setdefault(run_id, []).append((kind, value))
        out = []
        for run_id, uid, folder, source, *blobs in found:
            config, metrics, timings, stages, artifacts, provenance = map(json.loads, blobs)
            out.append(
                StoredRun(
                    uid=uid,
                    folder=folder,
                    config=config,
                    metrics=metrics,
                    rows=rows.get(run_id, []),
                    timings=timings,
                    stages=stages,
                    artifacts=artifacts,
                    provenance=provenance,
                    rows_source=source,
                    id=run_id,
                    labels=labels.get(run_id, []),
                )
            )
        return out

    def count(self) -> int:
        with self._errors():
            return self.db.execute("SELECT count(*) FROM runs").fetchone()[0]


def _dumps(obj: Any) -> str:
    """Canonical JSON that round-trips ``obj`` (non-finite floats are refused)."""
    return json.dumps(obj, allow_nan=False, default=_refuse)


def _refuse(obj: Any) -> Any:
    raise TypeError(f"not JSON: {obj!r}")


def _is_run(path: Path) -> bool:
    """Whether ``path`` (a ``results.json``) is a run's, not the aggregate of a run over
    seeds (whose runs are the folders below it)."""
    try:
        return not is_aggregate(json.loads(path.read_bytes()))
    except (OSError, ValueError, AttributeError):
        return True  # read_run names what is wrong with it


def run_folders(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The run folders among ``paths``: each one holding a run's ``results.json``, and for
    one that does not (or holds the aggregate of a run over seeds), every folder below it
    that does. An aggregate is never a run: its seeds' folders are."""
    found: list[Path] = []
    for folder in map(Path, paths):
        if (folder / "results.json").is_file() and _is_run(folder / "results.json"):
            found.append(folder)
        elif folder.is_dir():
            below = sorted(p.parent for p in folder.rglob("results.json") if _is_run(p))
            if not below:
                raise FileNotFoundError(f"{folder}: no run's results.json in it or below it")
            found += below
        else:
            raise FileNotFoundError(f"{folder}: no such folder")
    return found


def import_runs(
    paths: Sequence[str | os.PathLike], path: str | os.PathLike | None = None
) -> tuple[int, int]:
    """Index the run folders of ``paths`` (:func:`run_folders`) in the store at ``path``
    (default :func:`store_path`); returns (added, already there)."""
    found = run_folders(paths)
    with ResultsStore(store_path(path)) as store:
        return store.add_folders(found)


def store_finished_run(
    folder: str | os.PathLike, results_db: str | os.PathLike | Literal[False] | None
) -> int | None:
    """:func:`record_run` for the runner: ``results_db`` is the config's (False: no store);
    a store that cannot take the run is one logged error line naming its file, and the run
    (its ``results.json`` is already written) goes on. Returns the run's id, or None."""
    if results_db is False:
        return None
    try:
        return record_run(folder, results_db)
    except StoreError as e:
        log.error("%s; the run was not added (its results.json is written)", e)
        return None


def record_run(folder: str | os.PathLike, path: str | os.PathLike | None = None) -> int:
    """Add the run just written into ``folder`` to the store at ``path`` (default
    :func:`store_path`); returns its id. Raises :class:`StoreError` when the store cannot
    take it (the run's ``results.json`` is untouched)."""
    run = read_run(folder)
    with ResultsStore(store_path(path)) as store:
        return store.add(run)[0]


__all__ = [
    "DEFAULT_PATH",
    "ENV",
    "Filters",
    "ResultsStore",
    "StoreError",
    "StoredRun",
    "import_runs",
    "read_run",
    "record_run",
    "run_folders",
    "settings_key",
    "store_finished_run",
    "store_path",
]
