"""OpenAI's CLIP byte-pair tokenizer, offline: the vocabulary ships with the package.

A port of openai/CLIP `simple_tokenizer.py` (MIT, Copyright (c) 2021 OpenAI): the same text cleaning
(ftfy, HTML unescaping, lower case), the same pre-tokeniser pattern and merges, so ids match OpenAI's
and open_clip's exactly. Sequences are padded with 0 after EOT, as OpenAI does.
"""

from __future__ import annotations

import gzip
import html
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import ftfy
import regex
import torch

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """A reversible map from bytes to printable characters, so BPE never sees whitespace or control bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return regex.sub(r"\s+", " ", text.strip()).strip()


class TextTooLongError(ValueError):
    pass


class Tokenizer:
    """`tokenizer(["a photo of a dog."])` -> LongTensor (N, context_length): SOT, BPE ids, EOT, zeros."""

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = 77) -> None:
        self.context_length = context_length
        if vocab_path is None:
            with resources.files("mintclip.assets").joinpath(VOCAB_FILE).open("rb") as f:
                raw = f.read()
        else:
            raw = Path(vocab_path).read_bytes()
        merge_lines = gzip.decompress(raw).decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        merges = [tuple(line.split()) for line in merge_lines]
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.bpe_ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.cache = {SOT: SOT, EOT: EOT}
        self.sot_token, self.eot_token = self.encoder[SOT], self.encoder[EOT]

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def encode(self, text: str) -> list[int]:
        """BPE ids of the cleaned, lower-cased text, without SOT / EOT."""
        ids = []
        for piece in PATTERN.findall(clean(text).lower()):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(piece).split(" "))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text = "".join(self.decoder[i] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | Sequence[str], truncate: bool = False) -> torch.Tensor:
        """Token ids (N, context_length). Too long a text raises TextTooLongError unless truncate=True,
        which keeps the first context_length - 1 tokens and ends with EOT (OpenAI's rule)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token, *self.encode(text), self.eot_token]
            if len(ids) > self.context_length:
                if not truncate:
                    raise TextTooLongError(
                        f"text {text[:60]!r} has {len(ids)} tokens, more than the context length "
                        f"{self.context_length}; shorten it or pass truncate=True")
                ids = ids[: self.context_length - 1] + [self.eot_token]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
