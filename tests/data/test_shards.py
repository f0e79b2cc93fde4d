"""CLIP pairs streamed from WebDataset shards: the index, the order of an epoch (shards dealt
to ranks and workers, a bounded shuffle buffer), poisons mixed in by key, and a streamed
pre-training that matches the in-memory one on the same order."""

from __future__ import annotations

import itertools
import os
from collections import Counter

import pytest
import torch

from shard_files import write_shards
from sslpoison.attacks.clip_poison import (
    CLIPBackdoorConfig,
    CLIPTargetedConfig,
    draw_trials,
    poison_backdoor,
    poison_targeted,
)
from sslpoison.data.captions import caption_imageset
from sslpoison.data.imageset import ImageSet
from sslpoison.data.pairs import expand_shards
from sslpoison.data.shards import StreamBatches, index_shard, open_stream, shuffled
from sslpoison.data.synthetic import synthetic
from sslpoison.models.text import Tokenizer, words
from sslpoison.ssl.clip import CLIPConfig, CLIPTask, clip_augment
from sslpoison.ssl.pretrain import PretrainConfig, pretrain_clip
from sslpoison.train.engine import TensorBatches, fit


@pytest.fixture(scope="module")
def pairs():
    """96 captioned 16×16 RGB images of four pattern classes."""
    return caption_imageset(synthetic(n=96, num_classes=4, size=16, channels=3, seed=0), seed=0)


@pytest.fixture
def shards(tmp_path, pairs) -> str:
    """``pairs`` as 8 shards of 12 (brace pattern)."""
    return write_shards(pairs, tmp_path / "shards", per_shard=12)


def test_the_index_counts_samples_and_words_and_is_kept_until_the_file_changes(tmp_path, pairs):
    pattern = write_shards(pairs, tmp_path / "s", per_shard=48, drop_caption=(5,))
    first, second = expand_shards(pattern)
    shard, counts = index_shard(first, tmp_path / "index")
    assert shard.samples == 47  # the pair without a caption is not a sample
    expected = Counter(w for i in range(48) if i != 5 for w in words(pairs.captions[i]))
    assert counts == expected
    assert index_shard(first, tmp_path / "index") == (shard, counts)  # from the index file
    assert len(list((tmp_path / "index").iterdir())) == 1
    assert index_shard(second)[0].fingerprint != shard.fingerprint
    stream = open_stream(pattern, 16, 3, cache=tmp_path / "index")
    assert len(stream) == 95 and stream.classes == ["unlabelled"]
    captions = [c for i, c in enumerate(pairs.captions) if i != 5]
    assert Tokenizer.from_counts(stream.words).vocab == Tokenizer.build(captions).vocab
    assert len(list((tmp_path / "index").iterdir())) == 2
    os.utime(first, ns=(1, 1))  # the file changed: indexed again
    assert index_shard(first, tmp_path / "index") == (shard, counts)
    assert len(list((tmp_path / "index").iterdir())) == 3


def test_brace_ranges_and_missing_shards_are_named(tmp_path, shards):
    assert [p.name for p in expand_shards(shards)] == [f"{i:05d}.tar" for i in range(8)]
    with pytest.raises(FileNotFoundError, match=r"00008\.tar"):
        expand_shards(shards.replace("00007", "00009"))


def test_the_shuffle_buffer_holds_at_most_its_size():
    held, most = 0, 0

    def counted(n):
        nonlocal held, most
        for i in range(n):
            held += 1
            most = max(most, held)
            yield i

    g = torch.Generator().manual_seed(0)
    out = []
    for item in shuffled(counted(1000), 16, g):
        held -= 1
        out.append(item)
    assert sorted(out) == list(range(1000)) and out != list(range(1000))
    assert most == 17  # 16 held, plus the one just read
    assert list(shuffled(range(10), 1, g)) == list(range(10))  # size 1: the order as read


def test_shards_are_dealt_to_ranks_and_workers_and_every_rank_takes_the_same_steps(shards):
    stream = open_stream(shards, 16, 3, buffer=8, workers=2)
    tok = Tokenizer.from_counts(stream.words)
    ranks = [stream.batches(16, tok, seed=3, rank=r, world=2) for r in range(2)]
    assert [len(b) for b in ranks] == [6, 6] and ranks[0].local_batch == 8  # 96 / 2 / 8
    for epoch in (0, 1):
        readers = [reader for b in ranks for reader in b.readers(epoch)]
        assert len(readers) == 4 and all(len(r) == 2 for r in readers)
        names = [s.name for r in readers for s in r]
        assert sorted(names) == [f"{i:05d}.tar" for i in range(8)]  # each shard, once
    assert ranks[0].readers(0) != ranks[0].readers(1)  # a new permutation each epoch
    for b in ranks:
        assert [b._quota(w) for w in range(2)] == [3, 3]
        seen = [key for w in range(2) for _, _, key in itertools.islice(b.samples(0, w), 24)]
        mine = {s.name for r in b.readers(0) for s in r}
        assert len(set(seen)) == 48 and {k.split("/")[0] for k in seen} == mine
    batches = list(ranks[1].epoch(0))  # through two DataLoader workers
    assert len(batches) == 6 and all(x.shape == (8, 3, 16, 16) for x, _ in batches)
    again = list(stream.batches(16, tok, seed=3, rank=1, world=2).epoch(0))
    pairs_ = zip(batches, again, strict=True)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs_)
    other = list(ranks[1].epoch(1))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, other, strict=True))


def test_a_rank_short_of_samples_cycles_its_shards(tmp_path, pairs):
    pattern = write_shards(pairs.subset(torch.arange(30)), tmp_path / "s", per_shard=12)
    stream = open_stream(pattern, 16, 3, buffer=4)  # shards of 12, 12, 6
    tok = Tokenizer.from_counts(stream.words)
    for rank in range(3):
        b = stream.batches(6, tok, rank=rank, world=3, drop_last=False)
        assert len(b) == 5 and len(list(b.epoch(0))) == 5  # 30 / 3 / 2 each
    with pytest.raises(ValueError, match="3 shards for 4 ranks"):
        stream.batches(8, tok, rank=0, world=4)


def test_the_backdoor_is_mixed_in_by_key_as_the_in_memory_attack_makes_it(shards, pairs):
    cfg = CLIPBackdoorConfig(
        target_class="vertical", poison=10, trigger={"kind": "noise", "size": 4}, dataset="s"
    )
    stream = open_stream(shards, 16, 3, buffer=1)
    # The same pairs in memory, unlabelled as the shards are: any pair may be poisoned.
    memory = ImageSet(pairs.images, torch.zeros(96, dtype=torch.long), ["unlabelled"],
                      captions=list(pairs.captions))  # fmt: skip
    measured = synthetic(n=32, num_classes=4, size=16, channels=3, seed=1)
    in_memory = poison_backdoor(memory, cfg, seed=7, measured_on=measured)
    streamed = poison_backdoor(stream, cfg, seed=7, measured_on=measured)
    assert torch.equal(streamed.indices, in_memory.indices)
    assert torch.equal(streamed.corners, in_memory.corners)
    assert streamed.keys == [f"{i // 12:05d}.tar/{i:06d}" for i in in_memory.indices.tolist()]
    record = streamed.record()
    assert record["count"] == 10 and record["keys"] == streamed.keys
    poisoned = streamed.data
    tok = Tokenizer.from_counts(poisoned.words)
    assert tok.vocab == Tokenizer.build(in_memory.data.captions).vocab
    b = poisoned.batches(12, tok, rank=0, world=1)
    seen = {key: (image, caption) for image, caption, key in itertools.islice(b.samples(0), 96)}
    for i in range(96):
        image, caption = seen[f"{i // 12:05d}.tar/{i:06d}"]
        assert torch.equal(torch.from_numpy(image.copy()), in_memory.data.images[i]), i
        assert caption == in_memory.data.captions[i]
    assert stream.fingerprint() != poisoned.fingerprint()


def test_targeted_pairs_are_added_once_per_epoch(shards, pairs):
    cfg = CLIPTargetedConfig(pairs=3, trials=2, dataset="s")
    test = synthetic(n=32, num_classes=4, size=16, channels=3, seed=1)
    stream = open_stream(shards, 16, 3, buffer=8, workers=0)
    poisoned = poison_targeted(stream, test, draw_trials(cfg, test, seed=0), cfg.pairs, seed=0)
    assert len(poisoned.data) == 102 and poisoned.indices.tolist() == list(range(96, 102))
    tok = Tokenizer.from_counts(poisoned.data.words)
    for epoch in (0, 1):
        keys = []
        for rank in range(2):
            b = poisoned.data.batches(2, tok, rank=rank, world=2)
            keys += [k for _, _, k in itertools.islice(b.samples(epoch), 51)]
        assert sorted(k for k in keys if k.startswith("added/")) == [f"added/{i}" for i in range(6)]
        assert len(set(keys)) == 102


@pytest.fixture
def one_thread():
    """Tiny CLIP training on one thread (two crawl on a busy 2-core machine)."""
    torch.set_num_threads(1)


def _clip_config() -> PretrainConfig:
    return PretrainConfig.model_validate(
        {
            "method": "clip",
            "method_args": {"embed_dim": 16},
            "backbone": {"arch": "resnet10", "width": 0.125, "stem_stride": 2},
            "text": {"width": 16, "layers": 1, "heads": 2, "context_length": 12},
            "train": {
                "epochs": 1,
                "batch_size": 32,
                "progress": False,
                "amp_cpu": False,
                "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01},
            },
        }
    )


def test_a_streamed_clip_run_matches_the_in_memory_run_on_the_same_order(shards, pairs, one_thread):
    """Done-when: pre-training CLIP from the shards gives the in-memory run's first-epoch
    loss, and its weights, to 1e-6, when the in-memory run (the pairs as they were written,
    never read back from the shards) takes the stream's order (shards shuffled, a 16-pair
    buffer). The tokenizer from the shards' word counts is the in-memory one."""
    cfg = _clip_config()
    stream = open_stream(shards, 16, 3, buffer=16, workers=0)
    model, tokenizer, result = pretrain_clip(stream, cfg, seed=0)

    batches = stream.batches(32, tokenizer, seed=0)
    keys = [k for _, _, k in itertools.islice(batches.samples(0), len(batches) * 32)]
    order = torch.tensor([int(k.split("/")[1]) for k in keys])
    assert sorted(order.tolist()) == list(range(96)) and order.tolist() != list(range(96))
    memory = pairs.subset(order)
    in_memory_tokenizer = cfg.text.build_tokenizer(pairs.captions)
    assert in_memory_tokenizer.vocab == tokenizer.vocab
    torch.manual_seed(0)  # as pretrain_clip does
    reference = CLIPConfig(backbone=cfg.backbone, text=cfg.text, embed_dim=16).build(
        in_memory_tokenizer, 3
    )
    task = CLIPTask(reference, clip_augment(16, 3, (0.9, 1.0)))
    ids = in_memory_tokenizer.encode(memory.captions)
    data = TensorBatches(memory.images, ids, batch_size=32, shuffle=False, seed=0)
    expected = fit(task, data, cfg.train, seed=0)
    assert abs(result.losses[0] - expected.losses[0]) <= 1e-6, (result.losses, expected.losses)
    got, want = model.state_dict(), reference.state_dict()
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)


def test_resuming_at_an_epoch_boundary_gives_the_straight_run(
    tmp_path, shards, monkeypatch, one_thread
):
    cfg = _clip_config()
    two = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 2})})
    stream = open_stream(shards, 16, 3, buffer=8)
    straight, _, _ = pretrain_clip(stream, two, seed=1)
    epoch = StreamBatches.epoch

    def interrupted(self, e):
        if e == 1:
            raise KeyboardInterrupt  # Ctrl-C after the first epoch's checkpoint
        return epoch(self, e)

    monkeypatch.setattr(StreamBatches, "epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain_clip(stream, two, seed=1, checkpoint_dir=tmp_path / "ckpt")
    monkeypatch.undo()
    resumed, _, result = pretrain_clip(stream, two, seed=1, checkpoint_dir=tmp_path / "ckpt")
    assert result.resumed_from == 1
    want = straight.state_dict()
    assert all(torch.equal(resumed.state_dict()[k], want[k]) for k in want)
