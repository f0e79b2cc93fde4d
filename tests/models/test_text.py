"""The word-level tokenizer and the text transformer of CLIP-style models."""

from __future__ import annotations

import json

import pytest
import torch

from sslpoison.models.text import SPECIALS, TextConfig, TextTransformer, Tokenizer, words

CORPUS = ["a photo of a cat.", "A photo of a DOG!", "my dog, barely worn", "cat cat boot"]


def test_words_lowercase_and_split_on_non_alphanumerics() -> None:
    assert words("My T-shirt, barely_worn! 42x") == ["my", "t", "shirt", "barely", "worn", "42x"]


def test_build_ranks_by_count_then_alphabet_and_honours_limits() -> None:
    tok = Tokenizer.build(CORPUS, context_length=8)
    assert tok.vocab[:4] == list(SPECIALS)
    assert tok.vocab[4:] == ["a", "cat", "dog", "of", "photo", "barely", "boot", "my", "worn"]
    assert Tokenizer.build(CORPUS, max_size=6).vocab[4:] == ["a", "cat"]
    assert Tokenizer.build(CORPUS, min_count=2).vocab[4:] == ["a", "cat", "dog", "of", "photo"]


def test_encode_round_trips_known_words_and_maps_unknown_to_unk() -> None:
    tok = Tokenizer.build(CORPUS, context_length=8)
    ids = tok.encode(["A photo of a DOG.", "a zebra cat"])
    assert ids.dtype == torch.int64 and ids.shape == (2, 8)
    assert ids[0].tolist()[:7] == [tok.bos_id, 4, 8, 7, 4, 6, tok.eos_id]
    assert ids[0, 7] == tok.pad_id
    assert ids[1].tolist() == [2, 4, tok.unk_id, 5, 3, 0, 0, 0]
    assert tok.decode(ids) == ["a photo of a dog", "a <unk> cat"]
    assert tok.decode(ids[1]) == ["a <unk> cat"]
    with pytest.raises(TypeError):
        tok.encode("one string")


def test_encode_truncates_and_always_ends_with_eos() -> None:
    tok = Tokenizer.build(CORPUS, context_length=5)
    ids = tok.encode(["a photo of a cat", ""])
    assert ids[0].tolist() == [tok.bos_id, 4, 8, 7, tok.eos_id]
    assert ids[1].tolist() == [tok.bos_id, tok.eos_id, 0, 0, 0]
    assert tok.decode(ids) == ["a photo of", ""]


def test_tokenizer_saves_and_loads_as_json(tmp_path) -> None:
    tok = Tokenizer.build(CORPUS, context_length=12)
    path = tok.save(tmp_path / "sub" / "tok.json")
    assert json.loads(path.read_text())["vocab"] == tok.vocab
    back = Tokenizer.load(path)
    assert back.vocab == tok.vocab and back.context_length == 12
    assert torch.equal(back.encode(CORPUS), tok.encode(CORPUS))
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match=r"bad\.json: not an sslpoison tokenizer"):
        Tokenizer.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="must start with"):
        Tokenizer(["a", "b"])


@pytest.mark.parametrize("causal", [True, False])
def test_transformer_shape_and_padding_leaves_pooled_output_unchanged(causal: bool) -> None:
    torch.manual_seed(0)
    tok = Tokenizer.build(CORPUS, context_length=16)
    cfg = TextConfig(width=32, layers=2, heads=4, causal=causal)
    model = cfg.build(tok, embed_dim=24).eval()
    ids = tok.encode(["a photo of a cat", "my dog", "boot"])
    with torch.no_grad():
        out = model(ids)
        assert out.shape == (3, 24) and torch.isfinite(out).all()
        # Fewer trailing pads (the same texts cut to 7 tokens) give the same embeddings.
        torch.testing.assert_close(model(ids[:, :7]), out)
        one = model(ids[2:3, :3])  # "<bos> boot <eos>" with no padding at all
        torch.testing.assert_close(one, out[2:3])
        # The words do matter.
        assert not torch.allclose(model(tok.encode(["a photo of a dog"])), out[:1])
    with pytest.raises(ValueError, match="exceeds the context length"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_transformer_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = TextTransformer(vocab_size=20, context_length=8, width=16, layers=1, heads=2)
    ids = torch.tensor([[2, 5, 6, 3, 0, 0, 0, 0], [2, 7, 3, 0, 0, 0, 0, 0]])
    model(ids).pow(2).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
