"""Image–caption pairs streamed from WebDataset shards (img2dataset's output) for CLIP
pre-training: only a bounded buffer of samples is ever in memory.

``data: {dataset: webdataset, shards: "DIR/{00000..00331}.tar", size: 64}`` gives a
:class:`PairStream`, which the pipeline takes where it takes the in-memory
:class:`~sslpoison.data.imageset.ImageSet` of other datasets. The shards are read with the tar
reader of :mod:`sslpoison.data.pairs` (members ``KEY.jpg|png|...`` + ``KEY.txt`` [+
``KEY.json``, ignored]).

- **Index.** Each shard is read once by its tar headers (:func:`~sslpoison.data.pairs.scan_shard`:
  no image decoded): its number of samples, a fingerprint (its members' names and sizes) and
  the word counts of its captions, kept in ``<cache>/shards/`` until the file changes. The
  counts give the tokenizer (the same vocabulary as from the captions in memory); the
  fingerprints, with the stream's settings, give the pre-training stage's cache key.
- **Order of an epoch** (:class:`StreamBatches`): the shards in a permutation drawn from
  (seed, epoch), dealt to the DDP ranks (``shards[rank::world]``) and within a rank to the
  DataLoader workers (``data.workers``); each reader decodes its shards in turn through a
  shuffle buffer (``data.shuffle_buffer`` samples per rank, split between its readers:
  webdataset's bounded ``shuffle``), cycling through its shards again if a rank must fill
  its last batches (every rank takes the same number of steps). An epoch depends on (seed,
  epoch) only, so a run resumes at an epoch boundary from the engine's checkpoint.
- **Poisons, by key** (:mod:`sslpoison.attacks.clip_poison`): the backdoor's pairs are the
  samples at the chosen positions of the index order, patched and re-captioned as the reader
  passes them (:attr:`PairStream.replaced`, ``shard/key`` → patch corner and caption); the
  targeted attack's pairs (:attr:`PairStream.added`, in memory) are dealt to the readers and
  mixed in at seeded places each epoch. No shard is rewritten.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslpoison.data.imageset import ImageSet
from sslpoison.data.pairs import UNLABELLED, expand_shards, scan_shard, shard_samples
from sslpoison.utils import atomic_write_json, stable_hash

log = logging.getLogger(__name__)

__all__ = ["PairStream", "Shard", "StreamBatches", "index_shard", "open_stream", "shuffled"]

#: The name a streamed pre-training set goes by (``data.dataset``).
WEBDATASET = "webdataset"
#: Bump when what an index file holds changes.
INDEX_VERSION = 1


@dataclass(frozen=True)
class Shard:
    """One shard as the index knows it: its path, its samples (image and caption both
    present) and a fingerprint of its members (names and sizes)."""

    path: str
    samples: int
    fingerprint: str

    @property
    def name(self) -> str:
        return Path(self.path).name


def _words(text: str) -> list[str]:
    from sslpoison.models.text import words

    return words(text)


def index_shard(path: Path, cache: Path | None = None) -> tuple[Shard, Counter]:
    """(the shard's facts, the word counts of its samples' captions), read from ``cache``
    (a folder) when this file (path, size, modification time) was indexed before."""
    path = Path(path)
    stat = path.stat()
    entry = None
    if cache is not None:
        which = stable_hash([str(path.resolve()), stat.st_size, stat.st_mtime_ns, INDEX_VERSION])
        entry = cache / f"{which}.json"
        try:
            saved = json.loads(entry.read_text(encoding="utf-8"))
            return Shard(str(path), saved["samples"], saved["fingerprint"]), Counter(saved["words"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not indexed yet (or damaged): index it again
    samples, counts, members = 0, Counter(), []
    for _, caption, parts in scan_shard(path):
        members.extend(parts)
        if caption is not None:
            samples += 1
            counts.update(_words(caption))
    shard = Shard(str(path), samples, stable_hash(members))
    if entry is not None:
        record = {"path": str(path), "samples": samples, "fingerprint": shard.fingerprint}
        atomic_write_json(entry, record | {"words": dict(counts)})
    return shard, counts


@dataclass(frozen=True)
class PairStream:
    """The pre-training pairs of a run that streams them from shards: what an
    :class:`~sslpoison.data.imageset.ImageSet` is to the rest of the pipeline (``name``,
    ``image_size``, ``channels``, ``classes``, ``len``), without the pixels.

    Attributes:
        shards: the shards, in the order listed.
        image_size, channels, crop: images are made ``channels``×``image_size``² (centre
            crop, or stretched); see :func:`~sslpoison.data.pairs.image_array`.
        words: word counts of every caption streamed (clean, replaced and added).
        buffer: samples held for shuffling per rank; ``workers``: DataLoader processes per
            rank (0: read in the training process).
        replaced: ``"<shard name>/<key>"`` → (patch corner (row, col), caption): pairs
            patched with ``trigger`` and re-captioned as they stream (a backdoor).
        trigger: the patch of ``replaced`` (a :class:`~sslpoison.triggers.TriggerConfig`).
        added: pairs held in memory, mixed into each epoch (targeted poisons), or None.
    """

    shards: tuple[Shard, ...]
    image_size: int
    channels: int
    words: Counter = field(compare=False, repr=False)
    crop: bool = True
    buffer: int = 5000
    workers: int = 0
    name: str = WEBDATASET
    replaced: Mapping[str, tuple[tuple[int, int], str]] = field(default_factory=dict)
    trigger: Any = None
    added: ImageSet | None = None

    @property
    def classes(self) -> list[str]:
        return [UNLABELLED]

    @property
    def streamed(self) -> int:
        """Pairs read from the shards (without the added ones)."""
        return sum(s.samples for s in self.shards)

    def __len__(self) -> int:
        return self.streamed + (len(self.added) if self.added is not None else 0)

    def __repr__(self) -> str:
        return (
            f"PairStream({self.name!r}, {len(self)} pairs in {len(self.shards)} shards, "
            f"{self.channels}×{self.image_size}×{self.image_size}, buffer {self.buffer}, "
            f"{self.workers} workers)"
        )

    def fingerprint(self) -> str:
        """What training on this stream depends on: the shards (by name, fingerprint and
        samples: a copy elsewhere is the same data), the image settings, the order's
        settings and the poisons."""
        added = None
        if self.added is not None:
            added = [self.added.images_hash(), self.added.captions]
        return stable_hash(
            {
                "shards": [(s.name, s.fingerprint, s.samples) for s in self.shards],
                "image": [self.image_size, self.channels, self.crop],
                "order": [self.buffer, self.workers],
                "replaced": sorted((k, list(c), t) for k, (c, t) in self.replaced.items()),
                "trigger": None if self.trigger is None else self.trigger.model_dump(mode="json"),
                "added": added,
            }
        )

    def keys_at(self, positions: Iterable[int]) -> list[tuple[str, str]]:
        """``("<shard name>/<key>", caption)`` of the samples at ``positions`` of the index
        order (the shards as listed, each in its own order); reads only the shards that
        hold them, by their headers."""
        wanted = sorted(set(int(p) for p in positions))
        found: dict[int, tuple[str, str]] = {}
        start, i = 0, 0
        for shard in self.shards:
            end = start + shard.samples
            mine = []
            while i < len(wanted) and wanted[i] < end:
                mine.append(wanted[i] - start)
                i += 1
            if mine:
                local = 0
                targets = set(mine)
                for key, caption, _ in scan_shard(Path(shard.path)):
                    if caption is None:
                        continue
                    if local in targets:
                        found[start + local] = (f"{shard.name}/{key}", caption)
                    local += 1
            start = end
        if i < len(wanted) or len(found) < len(wanted):
            raise ValueError(f"positions beyond the {self.streamed} streamed pairs: {wanted[-1]}")
        return [found[int(p)] for p in positions]

    def with_poison(
        self,
        *,
        replaced: Mapping[str, tuple[tuple[int, int], str]] | None = None,
        trigger: Any = None,
        added: ImageSet | None = None,
        originals: Iterable[str] = (),
    ) -> PairStream:
        """A copy streaming ``replaced`` pairs (patched with ``trigger``, re-captioned) and
        the ``added`` ones; the word counts follow (``originals``: the captions replaced)."""
        words = Counter(self.words)
        words.subtract(w for text in originals for w in _words(text))
        new = [t for _, t in (replaced or {}).values()] + list(added.captions if added else [])
        words.update(w for text in new for w in _words(text))
        words = Counter({w: c for w, c in words.items() if c > 0})
        changes: dict[str, Any] = {"words": words}
        if replaced is not None:
            changes |= {"replaced": dict(replaced), "trigger": trigger}
        if added is not None:
            changes["added"] = added
        return dataclasses.replace(self, **changes)

    def batches(self, batch_size: int, tokenizer: Any, **options: Any) -> StreamBatches:
        """The engine's batches over this stream (``options``: see :class:`StreamBatches`)."""
        return StreamBatches(self, batch_size, tokenizer, **options)


def open_stream(
    shards: str | list[str],
    size: int,
    channels: int = 3,
    *,
    buffer: int = 5000,
    workers: int = 0,
    cache: Path | None = None,
) -> PairStream:
    """The stream of ``shards`` (a brace range, a glob, a path or a list of them), each
    indexed (``cache``: where indexes are kept)."""
    paths = expand_shards(shards)
    if not paths:
        raise FileNotFoundError(f"no shard in {shards!r}")
    infos, words = [], Counter()
    for path in paths:
        shard, counts = index_shard(path, cache)
        infos.append(shard)
        words.update(counts)
    if not any(s.samples for s in infos):
        raise ValueError(f"{shards}: no sample with an image and a caption in the shards")
    return PairStream(tuple(infos), size, channels, words, buffer=buffer, workers=workers)


def shuffled(items: Iterable[Any], size: int, generator: torch.Generator) -> Iterator[Any]:
    """``items`` in a shuffled order, holding at most ``size`` of them (webdataset's
    ``shuffle``): the buffer fills, then each new item takes the place of a random one,
    which is yielded; the rest drain in a random order."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(torch.randint(size, (1,), generator=generator))
        buffer[i], item = item, buffer[i]
        yield item
    while buffer:
        i = int(torch.randint(len(buffer), (1,), generator=generator))
        buffer[i], buffer[-1] = buffer[-1], buffer[i]
        yield buffer.pop()


class StreamBatches:
    """The engine's batches (``len``, ``epoch(e)``, ``local_batch``: see
    :class:`~sslpoison.train.engine.TensorBatches`) over a :class:`PairStream`: (uint8
    images B×C×S×S, token ids B×L) on ``device``, B = ``batch_size`` / world size.

    Each rank takes ``len`` steps per epoch: ⌊(N / world) / B⌋ (or ⌈…⌉ without
    ``drop_last``; the last batch is then filled by cycling, as are ranks whose shards hold
    fewer samples). ``rank``/``world`` default to the process group's.
    """

    def __init__(
        self,
        stream: PairStream,
        batch_size: int,
        tokenizer: Any,
        *,
        seed: int = 0,
        drop_last: bool = True,
        device: torch.device | str = "cpu",
        rank: int | None = None,
        world: int | None = None,
    ) -> None:
        from sslpoison.train import dist

        self.stream, self.tokenizer, self.seed = stream, tokenizer, seed
        self.rank = dist.rank() if rank is None else rank
        self.world = dist.world_size() if world is None else world
        self.device = torch.device(device)
        self.local_batch = max(1, batch_size // self.world)
        shards = len(stream.shards)
        if shards < self.world:
            raise ValueError(
                f"data.shards: {shards} shards for {self.world} ranks; each rank reads its "
                f"own shards, so there must be at least as many shards as ranks"
            )
        per_rank = len(stream) // self.world
        steps = per_rank / self.local_batch
        self.steps = math.floor(steps) if drop_last else math.ceil(steps)
        if self.steps < 1:
            raise ValueError(f"batch_size {batch_size} is larger than the {len(stream)} pairs")
        self.workers = min(stream.workers, shards // self.world)  # each reader has a shard
        readers = max(1, self.workers)
        self.buffer = max(1, stream.buffer // readers)

    def __len__(self) -> int:
        return self.steps

    def readers(self, epoch: int) -> list[list[Shard]]:
        """This rank's shards per reader (worker) in ``epoch``: every reader of every rank
        gets different shards, the epoch's permutation decides which."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.stream.shards), generator=g).tolist()
        mine = [self.stream.shards[i] for i in order[self.rank :: self.world]]
        n = max(1, self.workers)
        return [mine[w::n] for w in range(n)]

    def _quota(self, reader: int) -> int:
        """Batches reader ``reader`` yields per epoch (their sum over readers: ``len``)."""
        n = max(1, self.workers)
        return self.steps // n + (reader < self.steps % n)

    def _added(self, epoch: int, reader: int) -> list[int]:
        """Indices of the added pairs this reader mixes in (dealt round-robin over all
        readers of all ranks)."""
        added = self.stream.added
        if added is None:
            return []
        n = max(1, self.workers)
        slot, slots = self.rank * n + reader, self.world * n
        return list(range(slot, len(added), slots))

    def samples(self, epoch: int, reader: int = 0) -> Iterator[tuple[np.ndarray, str, str]]:
        """``(image, caption, key)`` of reader ``reader`` in ``epoch``, in the order it
        batches them, endlessly: a pass over its shards (with its added pairs mixed in)
        through the shuffle buffer, then — should the epoch need more — further passes."""
        shards = self.readers(epoch)[reader]
        if not sum(s.samples for s in shards):
            raise ValueError(f"{[s.path for s in shards]}: no pairs to stream in these shards")
        which = (self.seed * 100_003 + epoch) * 1_009 + self.rank * 31 + reader
        g = torch.Generator().manual_seed(which)
        added = self._added(epoch, reader)

        def passes() -> Iterator[Iterator[tuple[np.ndarray, str, str]]]:
            yield shuffled(self._pass(shards, added, g), self.buffer, g)
            while True:
                yield shuffled(self._pass(shards, [], g), self.buffer, g)

        return itertools.chain.from_iterable(passes())

    def _pass(
        self, shards: list[Shard], added: list[int], g: torch.Generator
    ) -> Iterator[tuple[np.ndarray, str, str]]:
        """One pass over ``shards`` in order, the pairs ``added`` at seeded places, the
        replaced pairs patched and re-captioned."""
        stream = self.stream
        patch = None
        if stream.replaced:
            from sslpoison.triggers import PatchTrigger

            patch = PatchTrigger(stream.trigger, stream.channels, stream.image_size)
        total = sum(s.samples for s in shards) + len(added)
        places = sorted(torch.randperm(total, generator=g)[: len(added)].tolist())
        at = dict(zip(places, added, strict=True))
        position = 0
        for shard in shards:
            for image, caption, key in shard_samples(
                Path(shard.path), stream.image_size, channels=stream.channels, crop=stream.crop
            ):
                while position in at:
                    yield self._added_sample(at.pop(position))
                    position += 1
                name = f"{shard.name}/{key}"
                if patch is not None and name in stream.replaced:
                    corner, caption = stream.replaced[name]
                    pixels = torch.from_numpy(np.array(image))[None]
                    image = patch.apply(pixels, corners=torch.tensor([corner]))[0][0].numpy()
                yield image, caption, name
                position += 1
        for index in at.values():  # places after the last pair read
            yield self._added_sample(index)

    def _added_sample(self, index: int) -> tuple[np.ndarray, str, str]:
        added = self.stream.added
        return added.images[index].cpu().numpy(), added.captions[index], f"added/{index}"

    def reader_batches(
        self, epoch: int, reader: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Reader ``reader``'s batches of ``epoch`` on the CPU: (uint8 B×C×S×S, int64 B×L)."""
        stream, b = self.stream, self.local_batch
        images = np.empty((b, stream.channels, stream.image_size, stream.image_size), np.uint8)
        samples = self.samples(epoch, reader)
        for _ in range(self._quota(reader)):
            captions = []
            for i in range(b):
                image, caption, _ = next(samples)
                images[i] = image
                captions.append(caption)
            yield torch.from_numpy(images.copy()), self.tokenizer.encode(captions)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The ``len`` batches of ``epoch`` on ``self.device``."""
        if self.workers == 0:
            batches: Iterable = self.reader_batches(epoch, 0)
        else:
            from torch.utils.data import DataLoader

            batches = DataLoader(
                _Readers(self, epoch),
                batch_size=None,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(self.seed),  # not the global RNG
                persistent_workers=False,
            )
        blocking = self.device.type != "cuda"
        for images, ids in batches:
            yield images.to(self.device, non_blocking=not blocking), ids.to(self.device)


class _Readers(torch.utils.data.IterableDataset):
    """One epoch's batches, each DataLoader worker yielding its own reader's."""

    def __init__(self, batches: StreamBatches, epoch: int) -> None:
        super().__init__()
        self.batches, self.epoch = batches, epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        reader = 0 if info is None else info.id
        return self.batches.reader_batches(self.epoch, reader)
