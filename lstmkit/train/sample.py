"""Loading a trained run, sampling text from it, and evaluating it on held-out text."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.text import Vocabulary, eval_rows
from .checkpoint import CheckpointError, load_checkpoint
from .config import TrainConfig
from .model import LanguageModel, evaluate_loss


@dataclass
class LoadedRun:
    model: LanguageModel
    vocab: Vocabulary
    config: TrainConfig
    step: int
    path: Path


def checkpoint_path(run_dir: str | Path, which: str = "best") -> Path:
    if which not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {which!r}")
    return Path(run_dir) / "checkpoints" / f"{which}.pt"


def load_run(run_dir: str | Path, which: str = "best") -> LoadedRun:
    """The model of a run directory written by ``lstmkit train``, in eval mode."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    path = checkpoint_path(run_dir, which)
    payload = load_checkpoint(path)
    try:
        config = TrainConfig.from_json(payload["config"])
        vocab = Vocabulary.from_json(payload["vocab"])
        model = LanguageModel(len(vocab), config)
        model.load_state_dict(payload["model"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path} does not hold a usable model: {e}") from None
    model.eval()
    return LoadedRun(model, vocab, config, int(payload["step"]), path)


@torch.no_grad()
def generate(model: nn.Module, vocab: Vocabulary, *, prime: str = "", length: int = 300,
             temperature: float = 1.0, top_k: int | None = None,
             seed: int | None = 0) -> Iterator[str]:
    """Yield the text of ``length`` sampled tokens, one token at a time, after feeding
    ``prime`` (default: a newline). ``temperature`` divides the logits; ``top_k`` keeps
    only the k most likely tokens. A fixed ``seed`` gives the same text every time, and
    sampling never touches torch's global random state."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be ≥ 1, got {top_k}")
    if length < 0:
        raise ValueError(f"length must be ≥ 0, got {length}")
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else torch.seed())
    was_training = model.training
    model.eval()
    ids = vocab.encode(prime or "\n")
    if not len(ids):
        ids = vocab.encode("\n")
    logits, state = model(torch.as_tensor(ids)[None], None)
    last = logits[0, -1]
    try:
        for _ in range(length):
            scores = last / temperature
            scores[0] = -math.inf                            # never emit <unk>
            if top_k is not None and top_k < scores.numel():
                kth = torch.topk(scores, top_k).values[-1]
                scores = scores.masked_fill(scores < kth, -math.inf)
            token = torch.multinomial(torch.softmax(scores, 0), 1, generator=gen)
            text = vocab.decode(token)
            if vocab.kind == "word":
                text = text if text == "\n" else " " + text
            yield text
            logits, state = model(token[None], state)
            last = logits[0, -1]
    finally:
        model.train(was_training)


def metric_of(loss: float, kind: str) -> tuple[str, float]:
    """("bpc", bits per character) for characters, ("ppl", perplexity) for words."""
    return ("bpc", loss / math.log(2)) if kind == "char" else ("ppl", math.exp(min(loss, 50)))


def evaluate_ids(model: nn.Module, vocab: Vocabulary, ids: np.ndarray, *, seq_len: int,
                 streams: int = 32) -> dict:
    """Loss and BPC (characters) or perplexity (words) of ``model`` on the token ids
    ``ids``, read as up to ``streams`` continuous streams with the state carried (as
    validation during training reads them, see :func:`lstmkit.data.text.eval_rows`)."""
    loss, n = evaluate_loss(model, eval_rows(ids, streams, seq_len), seq_len)
    name, value = metric_of(loss, vocab.kind)
    return {"loss": loss, name: value, "tokens": n, "unknown_tokens": int((ids == 0).sum())}


def evaluate_text(model: nn.Module, vocab: Vocabulary, text: str, *, seq_len: int,
                  streams: int = 32) -> dict:
    """:func:`evaluate_ids` of ``text``; unknown tokens are counted and scored as
    ``<unk>``."""
    return evaluate_ids(model, vocab, vocab.encode(text), seq_len=seq_len, streams=streams)
