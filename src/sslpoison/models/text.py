"""The text side of CLIP-style models: a word-level tokenizer and a small text transformer.

CLIP (Radford et al., ICML 2021, Sec. 2.4) encodes a caption with a transformer over
byte-pair tokens in ``[SOS] ... [EOS]`` brackets; the activation at ``[EOS]`` (after a final
layer norm) is projected into the joint embedding space, and self-attention is causal
(masked). Ours keeps that shape at a small scale: a word-level vocabulary built from the
training captions (enough for templated or small caption corpora; no BPE), learned positional
embeddings, pre-LN blocks, pooling at ``<eos>``.

The tokenizer is saved as plain JSON (never pickled), next to the weights.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
from pydantic import Field, PositiveInt

from sslpoison.configbase import Config
from sslpoison.utils import atomic_write_json

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
#: The special tokens, always ids 0–3 in this order.
SPECIALS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits (any script)
_FORMAT = "sslpoison-tokenizer"


def words(text: str) -> list[str]:
    """``text`` lower-cased and split on everything that is not a letter or a digit.

    ``"My T-shirt, barely worn!"`` → ``["my", "t", "shirt", "barely", "worn"]``.
    """
    return _WORD.findall(text.lower())


class Tokenizer:
    """Word-level tokenizer with a fixed context length.

    ``encode`` maps each text to ``<bos> w_1 ... w_n <eos> <pad> ...`` of exactly
    ``context_length`` ids: words beyond ``context_length − 2`` are cut (``<eos>`` always
    closes the sequence, so the text transformer can pool there), words outside the
    vocabulary become ``<unk>``.

    Args:
        vocab: the tokens by id; must start with :data:`SPECIALS` (``<pad>`` = 0, ``<unk>`` =
            1, ``<bos>`` = 2, ``<eos>`` = 3).
        context_length: L, the length of every encoded sequence (≥ 3).
    """

    def __init__(self, vocab: Sequence[str], context_length: int = 32) -> None:
        vocab = list(vocab)
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"tokenizer vocab must start with {', '.join(SPECIALS)}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("tokenizer vocab has repeated tokens")
        if context_length < 3:
            raise ValueError(f"context_length must be ≥ 3, got {context_length}")
        self.vocab = vocab
        self.context_length = context_length
        self.index = {w: i for i, w in enumerate(vocab)}
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = range(len(SPECIALS))

    @classmethod
    def build(
        cls,
        corpus: Iterable[str],
        max_size: int = 10_000,
        min_count: int = 1,
        context_length: int = 32,
    ) -> Tokenizer:
        """A vocabulary of the corpus's most frequent words.

        Args:
            corpus: texts (e.g. the training captions).
            max_size: the most tokens, the four special tokens included.
            min_count: words seen fewer times are left out (they encode as ``<unk>``).
            context_length: L of the encoded sequences.

        Words are ranked by count, ties in alphabetical order, so the same corpus always
        gives the same ids.
        """
        counts = Counter(w for text in corpus for w in words(text))
        return cls.from_counts(counts, max_size, min_count, context_length)

    @classmethod
    def from_counts(
        cls,
        counts: Mapping[str, int],
        max_size: int = 10_000,
        min_count: int = 1,
        context_length: int = 32,
    ) -> Tokenizer:
        """:meth:`build` from the corpus's word counts (``{word: count}`` of :func:`words`),
        e.g. summed over shards that are never all in memory: the same vocabulary."""
        if max_size <= len(SPECIALS):
            raise ValueError(f"max_size must exceed the {len(SPECIALS)} special tokens")
        kept = (w for w, c in counts.items() if c >= min_count)  # never a special: no "<"
        ranked = sorted(kept, key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *ranked[: max_size - len(SPECIALS)]], context_length)

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids of each text: int64 B×L (L = ``context_length``)."""
        if isinstance(texts, str):
            raise TypeError("Tokenizer.encode takes a list of texts, not one string")
        length = self.context_length
        out = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.index.get(w, self.unk_id) for w in words(text)[: length - 2]]
            row = [self.bos_id, *ids, self.eos_id]
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Texts of B×L (or L) ids: the words up to ``<eos>``, joined by spaces.

        Unknown words come back as ``<unk>``; case and punctuation are gone.
        """
        rows = ids.view(1, -1) if ids.dim() == 1 else ids
        texts = []
        for row in rows.tolist():
            out = []
            for t in row:
                if t == self.eos_id:
                    break
                if t not in (self.pad_id, self.bos_id):
                    out.append(self.vocab[t])
            texts.append(" ".join(out))
        return texts

    # ---- JSON --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": _FORMAT,
            "version": 1,
            "context_length": self.context_length,
            "vocab": self.vocab,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Tokenizer:
        if d.get("format") != _FORMAT:
            raise ValueError("not an sslpoison tokenizer (the format field differs)")
        return cls(d["vocab"], int(d["context_length"]))

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as JSON (atomically); returns the path."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(p, self.to_dict())
        return p

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer not found: {p}")
        try:
            return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{p}: {e}") from None

    def __repr__(self) -> str:
        return f"Tokenizer({self.vocab_size} tokens, context {self.context_length})"


class TextTransformer(nn.Module):
    """Token + learned positional embedding → pre-LN transformer → ``<eos>`` → projection.

    Attention masks: with ``causal`` (CLIP's choice) position i attends to positions ≤ i, so
    the ``<eos>`` output depends on the caption alone; in both modes ``<pad>`` keys are
    masked out. Hence padding never changes the pooled output.

    Args:
        vocab_size: the tokenizer's vocabulary size.
        context_length: the longest sequence (the size of the positional embedding).
        width: the transformer's model dimension.
        layers: the number of blocks.
        heads: attention heads (must divide ``width``).
        embed_dim: the output (joint embedding) dimension.
        mlp_ratio: the blocks' hidden size over ``width``.
        causal: causal self-attention.
        dropout: dropout in the blocks (CLIP: none).
        pad_id, eos_id: the tokenizer's ``<pad>`` and ``<eos>`` ids.

    Shapes: ``forward``: int64 B×L token ids (L ≤ ``context_length``) → B×``embed_dim``.
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int = 32,
        width: int = 256,
        layers: int = 4,
        heads: int = 4,
        embed_dim: int = 256,
        mlp_ratio: float = 4.0,
        causal: bool = True,
        dropout: float = 0.0,
        pad_id: int = 0,
        eos_id: int = 3,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"text width {width} is not divisible by heads {heads}")
        self.context_length = context_length
        self.causal = causal
        self.pad_id, self.eos_id = pad_id, eos_id
        self.embed_dim = embed_dim
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                heads,
                dim_feedforward=round(width * mlp_ratio),
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(layers)
        )
        self.ln_final = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.token.weight, std=0.02)  # CLIP's initialisation
        nn.init.normal_(self.position, std=0.01)
        nn.init.normal_(self.proj.weight, std=width**-0.5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, length = ids.shape
        if length > self.context_length:
            raise ValueError(
                f"text of {length} tokens exceeds the context length {self.context_length}"
            )
        x = self.token(ids) + self.position[:length]
        padding = ids == self.pad_id  # B×L, True = ignored key
        mask = None
        if self.causal:
            mask = torch.ones(length, length, dtype=torch.bool, device=ids.device).triu(1)
        for block in self.blocks:
            x = block(x, src_mask=mask, src_key_padding_mask=padding)
        x = self.ln_final(x)
        is_eos = ids == self.eos_id
        last_token = (~padding).sum(1).sub(1).clamp(min=0)
        where = torch.where(is_eos.any(1), is_eos.int().argmax(1), last_token)
        return self.proj(x[torch.arange(b, device=ids.device), where])


class TextConfig(Config):
    """The text tower and its tokenizer (built from the training captions)."""

    vocab_size: PositiveInt = 10_000
    min_count: PositiveInt = 1
    context_length: int = Field(32, ge=3)
    width: PositiveInt = 256
    layers: PositiveInt = 4
    heads: PositiveInt = 4
    mlp_ratio: float = Field(4.0, gt=0)
    causal: bool = True

    def build_tokenizer(self, corpus: Iterable[str]) -> Tokenizer:
        """The vocabulary of ``corpus`` (at most ``vocab_size`` tokens)."""
        return Tokenizer.build(corpus, self.vocab_size, self.min_count, self.context_length)

    def tokenizer_from_counts(self, counts: Mapping[str, int]) -> Tokenizer:
        """The vocabulary of a corpus given by its word counts (:meth:`Tokenizer.from_counts`)."""
        return Tokenizer.from_counts(counts, self.vocab_size, self.min_count, self.context_length)

    def build(self, tokenizer: Tokenizer, embed_dim: int) -> TextTransformer:
        """A fresh text transformer for ``tokenizer``'s ids, projecting to ``embed_dim``."""
        return TextTransformer(
            tokenizer.vocab_size,
            tokenizer.context_length,
            self.width,
            self.layers,
            self.heads,
            embed_dim,
            self.mlp_ratio,
            self.causal,
            pad_id=tokenizer.pad_id,
            eos_id=tokenizer.eos_id,
        )


__all__ = ["SPECIALS", "TextConfig", "TextTransformer", "Tokenizer", "words"]
