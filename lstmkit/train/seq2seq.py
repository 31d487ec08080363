r"""Sequence-to-sequence runs with an attentional encoder–decoder: ``lstmkit seq2seq``.

    from lstmkit.train.seq2seq import Seq2SeqConfig, Seq2SeqTrainer
    result = Seq2SeqTrainer(Seq2SeqConfig(), "runs/g2p").fit()     # CMUdict G2P

The model is :class:`lstmkit.seq2seq.Seq2Seq`. The data is a TSV file of pairs or, by
default, the CMU Pronouncing Dictionary (:mod:`lstmkit.data.pairs`), split by source with the
run's seed. Each step draws ``batch`` training pairs at random (from the step number, so a
resumed run continues exactly). With ``bucket`` = k > 1 (the default, 32), k batches' worth
of pairs are drawn at once, sorted by source then target length, cut into k batches of
similar length and served in a random order, as fairseq and OpenNMT batch by length: the
decoder then runs few padded steps, and a batch whose sources all have one length runs its
encoder through oneDNN where it is installed (auto backend; packed sequences of different
lengths take the C++ loop). On CMUdict a step of the two-layer model with batches of 128
took about 0.3 s instead of 0.5 s (docs/seq2seq.md). Every ``eval_every`` steps the
validation pairs' loss is computed and up to ``val_limit`` validation sources are decoded
greedily; the best checkpoint is the one with the lowest word error rate on them (ties: the
lower loss). The test split is decoded once at the end with that checkpoint (``beam``), into
``test.json``.

Scores, as the grapheme-to-phoneme literature counts them: a source is right when the output
equals any of its references; ``word_error_rate`` = 1 − ``exact_match``; ``token_error_rate``
= Σ edit distance to the closest reference / Σ length of that reference (the phoneme error
rate for G2P); ``bleu`` by sacrebleu (all references) when the targets are words.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..data.pairs import (
    CMUDICT,
    TOKENS,
    Entry,
    Pairs,
    PairsError,
    detokenize,
    load_pairs,
    split_entries,
    tokenize,
)
from ..seq2seq import ATTENTIONS, Seq2Seq
from ..tagging.model import PAD, UNK, Vocab
from .checkpoint import CheckpointError
from .config import SequenceTaskConfig
from .loop import TrainerBase, load_run, resume_run_config
from .progress import Progress

BOS, EOS = "<s>", "</s>"
SPECIALS = (PAD, BOS, EOS, UNK)             # ids 0, 1, 2, 3: Seq2Seq's pad, bos, eos
RESUMABLE = ("steps", "eval_every", "log_every", "quiet")


@dataclass
class Seq2SeqConfig(SequenceTaskConfig):
    """Everything that decides a seq2seq run (saved as ``config.json``): the model and
    optimisation fields of :class:`SequenceTaskConfig` with an encoder–decoder's defaults,
    then the data, the model's own fields and decoding."""

    # runs saved before the field existed drew their batches at random
    ABSENT_MEANS: ClassVar[dict] = {"bucket": 1}

    hidden: int = 256                      # per encoder direction, and the decoder
    dropout: float = 0.2
    steps: int = 4000
    batch: int = 64                        # pairs per step, over all processes
    bucket: int = 32                       # batches drawn together and sorted by length
    label_smoothing: float = 0.0           # ε of the training loss (validation: plain NLL)
    # data
    data: str | None = None                # a TSV of pairs; None: the built-in CMUdict
    source_tokens: str = "char"
    target_tokens: str = "word"
    lowercase: bool = False                # lowercase sources (CMUdict's words are)
    no_stress: bool = False                # drop ARPAbet stress digits from the targets
    val_fraction: float = 0.02
    test_fraction: float = 0.1
    # the model
    embed: int = 64
    attention: str = "bahdanau"
    input_feeding: bool = True
    # decoding
    beam: int = 1                          # the test split's decoding
    length_penalty: float = 0.0
    max_len: int | None = None             # None: 2 × the longest training target + 5
    val_limit: int = 2000                  # validation sources decoded at each validation

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"invalid seq2seq configuration: {what}")

        self._check_common(need)
        need(self.cell in ("lstm", "gru"), f"cell must be lstm or gru, got {self.cell!r}")
        need(self.source_tokens in TOKENS and self.target_tokens in TOKENS,
             f"source_tokens and target_tokens must be one of {TOKENS}")
        need(self.attention in ATTENTIONS,
             f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        for name in ("layers", "hidden", "embed", "steps", "batch", "bucket", "log_every",
                     "beam", "val_limit"):
            need(getattr(self, name) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")
        need(self.max_len is None or self.max_len >= 1, "max_len must be ≥ 1")
        need(0.0 <= self.label_smoothing < 1.0,
             f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        need(0 < self.val_fraction < 0.5 and 0 < self.test_fraction < 0.5,
             "val_fraction and test_fraction must be in (0, 0.5)")

    @property
    def name(self) -> str:
        return "cmudict" if self.data is None else Path(self.data).stem


# --- scores -----------------------------------------------------------------------------------

def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions of one token each)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def score_outputs(outputs: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
                  *, bleu: bool = False, detok: str = "word") -> dict:
    """Scores of token outputs against each source's references (module docstring)."""
    if len(outputs) != len(references) or not outputs:
        raise ValueError(f"score_outputs: {len(outputs)} outputs for {len(references)} "
                         "sources (need the same number, at least one)")
    right = edits = length = 0
    for out, refs in zip(outputs, references):
        out = list(out)
        right += any(out == list(r) for r in refs)
        d, n = min((edit_distance(out, r), len(r)) for r in refs)
        edits, length = edits + d, length + n
    exact = right / len(outputs)
    scores = {"sources": len(outputs), "exact_match": exact, "word_error_rate": 1 - exact,
              "token_error_rate": edits / max(length, 1)}
    if bleu:
        scores["bleu"] = corpus_bleu(outputs, references, detok)
    return scores


def corpus_bleu(outputs, references, detok: str = "word") -> float:
    """sacrebleu's corpus BLEU (default 13a tokenisation) against all references."""
    try:
        import sacrebleu
    except ImportError:
        raise ImportError("BLEU needs the sacrebleu package: pip install sacrebleu") from None
    width = max(len(r) for r in references)
    streams = [[detokenize(r[k], detok) if k < len(r) else None for r in references]
               for k in range(width)]
    return float(sacrebleu.corpus_bleu([detokenize(o, detok) for o in outputs], streams).score)


# --- the data as ids --------------------------------------------------------------------------

@dataclass
class Encoded:
    """The entries of one split: their tokens and the training pairs as ids."""

    entries: list[Entry]
    sources: list[list[str]]               # per entry
    references: list[list[list[str]]]      # per entry, every reference's tokens
    pairs: list[tuple[list[int], list[int]]]   # (source ids, bos … eos ids), every reference


def strip_stress(tokens: Sequence[str]) -> list[str]:
    """ARPAbet phonemes without their stress digit (``AH0`` → ``AH``), as the G2P
    literature scores CMUdict; other tokens unchanged."""
    return [t[:-1] if len(t) > 1 and t[-1] in "012" and t[:-1].isalpha() else t
            for t in tokens]


def target_tokens(text: str, cfg: Seq2SeqConfig) -> list[str]:
    """A target's tokens as the run trains on them (without stress digits with
    ``no_stress``)."""
    tokens = tokenize(text, cfg.target_tokens)
    return strip_stress(tokens) if cfg.no_stress else tokens


def encode_split(entries: list[Entry], cfg: Seq2SeqConfig, src: Vocab, tgt: Vocab) -> Encoded:
    sources = [tokenize(e.source.lower() if cfg.lowercase else e.source, cfg.source_tokens)
               for e in entries]
    refs = [list(dict.fromkeys(tuple(target_tokens(t, cfg)) for t in e.targets))
            for e in entries]                    # without stress, references may coincide
    refs = [[list(r) for r in rs] for rs in refs]
    bos, eos = tgt.index(BOS), tgt.index(EOS)
    pairs = [(src.encode(s), [bos, *tgt.encode(r), eos]) for s, rs in zip(sources, refs)
             for r in rs]
    return Encoded(entries, sources, refs, pairs)


def make_batch(pairs: Sequence[tuple[list[int], list[int]]]) -> tuple[Tensor, ...]:
    """(src (B, S), src_lengths (B,), tgt (B, T), tgt_lengths (B,)), padded with 0."""
    S = max(len(s) for s, _ in pairs)
    T = max(len(t) for _, t in pairs)
    src = torch.zeros(len(pairs), S, dtype=torch.long)
    tgt = torch.zeros(len(pairs), T, dtype=torch.long)
    for i, (s, t) in enumerate(pairs):
        src[i, :len(s)] = torch.tensor(s)
        tgt[i, :len(t)] = torch.tensor(t)
    return (src, torch.tensor([len(s) for s, _ in pairs]), tgt,
            torch.tensor([len(t) for _, t in pairs]))


@torch.no_grad()
def decode_sources(model: Seq2Seq, sources: Sequence[Sequence[str]], src: Vocab, tgt: Vocab,
                   *, beam: int = 1, max_len: int = 50, length_penalty: float = 0.0,
                   batch: int = 256, attention: bool = False):
    """The output tokens of each source (eval mode; greedy for ``beam=1``), and with
    ``attention`` each output's α (steps, source length) as well."""
    was = model.training
    model.eval()
    outs: list[list[str]] = []
    alphas: list[Tensor] = []
    empty = [i for i, s in enumerate(sources) if not s]
    if empty:
        raise PairsError(f"source {empty[0] + 1} is empty; nothing to translate")
    for i in range(0, len(sources), batch):
        chunk = [src.encode(s) for s in sources[i:i + batch]]
        x, lengths, _, _ = make_batch([(s, [0]) for s in chunk])
        if beam == 1:
            got = model.greedy(x, lengths, max_len=max_len, return_attention=attention)
        else:
            got = model.beam_search(x, lengths, beam=beam, max_len=max_len,
                                    length_penalty=length_penalty, return_attention=attention)
        ids, att = got if attention else (got, None)
        outs.extend(tgt.decode(o) for o in ids)
        if att is not None:
            alphas.extend(a[:, :len(s)] for a, s in zip(att, chunk))
    model.train(was)
    return (outs, alphas) if attention else outs


# --- training ---------------------------------------------------------------------------------

@dataclass
class Seq2SeqResult:
    run_dir: Path
    best_step: int
    validation: dict
    test: dict | None


def build_model(cfg: Seq2SeqConfig, src: Vocab, tgt: Vocab) -> Seq2Seq:
    kwargs = {k: True for k in ("peephole", "coupled") if getattr(cfg, k)}
    return Seq2Seq(len(src), len(tgt), emb=cfg.embed, hidden=cfg.hidden, layers=cfg.layers,
                   attention=cfg.attention, cell=cfg.cell, dropout=cfg.dropout,
                   input_feeding=cfg.input_feeding, bos=tgt.index(BOS), eos=tgt.index(EOS),
                   pad=0, backend=cfg.backend, **kwargs)


def vocab_json(src: Vocab, tgt: Vocab) -> str:
    return json.dumps({"source": src.to_dict(), "target": tgt.to_dict()})


def vocabs_from_json(text: str) -> tuple[Vocab, Vocab]:
    d = json.loads(text)
    return Vocab.from_dict(d["source"]), Vocab.from_dict(d["target"])


def run_splits(cfg: Seq2SeqConfig) -> tuple[Pairs, tuple[list[Entry], list[Entry], list[Entry]]]:
    """The run's data and its (train, validation, test) entries, as training split them."""
    pairs = load_pairs(cfg.data)
    return pairs, split_entries(pairs, cfg.val_fraction, cfg.test_fraction, cfg.seed)


class _LossOf(nn.Module):
    """A model whose forward is its loss (what DistributedDataParallel wraps)."""

    def __init__(self, model: Seq2Seq, label_smoothing: float = 0.0):
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing

    def forward(self, *batch: Tensor) -> Tensor:
        return self.model.loss(*batch, label_smoothing=self.label_smoothing)


class Seq2SeqTrainer(TrainerBase):
    """Train an encoder–decoder into ``run_dir``; decode the test split once at the end."""

    unit, rate_key, command = "tok", "tokens_per_s", "lstmkit seq2seq train"

    def __init__(self, config: Seq2SeqConfig, run_dir: str | Path, *, resume: bool = False):
        super().__init__(config, run_dir, resume=resume)
        self.pairs, (train, val, test) = run_splits(config)
        self._pool: tuple = (None, [], [])      # (pool number, its sorted draw, batch order)
        if config.batch % self.world:
            raise ValueError(f"batch ({config.batch} pairs) must be divisible by the number "
                             f"of processes ({self.world})")
        if self.payload is not None:
            if self.payload.get("data_sha256") != self.pairs.sha256():
                raise PairsError("the data differs from the data the run was started on; "
                                 "resume needs the same file")
            self.src, self.tgt = vocabs_from_json(self.payload["vocab"])
        else:
            lower = config.lowercase
            self.src = Vocab.build((tokenize(e.source, config.source_tokens) for e in train),
                                   lower=lower, specials=SPECIALS)
            self.tgt = Vocab.build((target_tokens(t, config) for e in train
                                    for t in e.targets), specials=SPECIALS)
        self.train_set = encode_split(train, config, self.src, self.tgt)
        self.val_set = encode_split(val, config, self.src, self.tgt)
        self.test_set = encode_split(test, config, self.src, self.tgt)
        longest = max(len(t) for _, t in self.train_set.pairs) - 2
        self.max_len = config.max_len or 2 * longest + 5
        torch.manual_seed(config.seed)
        model = build_model(config, self.src, self.tgt)
        self._start(model, config.steps, config.eval_every)
        self.ddp = _LossOf(model, config.label_smoothing)   # the training loss
        if self.world > 1:            # DDP syncs gradients through forward(): the loss
            self.ddp = nn.parallel.DistributedDataParallel(self.ddp)

    def batch_indices(self, step: int) -> list[int]:
        """The training pairs of ``step`` (all processes'; a function of the seed and the
        step alone). ``bucket`` = 1: ``batch`` pairs at random. ``bucket`` = k: the pool of
        k batches that ``step`` falls in, drawn at random, sorted by (source, target)
        length and cut into k batches, served in a random order."""
        cfg, n = self.cfg, len(self.train_set.pairs)
        if cfg.bucket == 1:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            return torch.randint(n, (cfg.batch,), generator=g).tolist()
        pool, within = divmod(step, cfg.bucket)
        if self._pool[0] != pool:              # drawn and sorted once for its k steps
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7_919 * pool + 1)
            idx = torch.randint(n, (cfg.batch * cfg.bucket,), generator=g).tolist()
            pairs = self.train_set.pairs
            idx.sort(key=lambda i: (len(pairs[i][0]), len(pairs[i][1]), i))
            self._pool = (pool, idx, torch.randperm(cfg.bucket, generator=g).tolist())
        _, idx, order = self._pool
        k = order[within]
        return idx[k * cfg.batch:(k + 1) * cfg.batch]

    def _batch_loss(self) -> tuple[Tensor, int]:
        share = self.cfg.batch // self.world
        idx = self.batch_indices(self.step)[self.rank * share:(self.rank + 1) * share]
        batch = make_batch([self.train_set.pairs[i] for i in idx])
        tokens = int(batch[3].sum()) - len(idx)
        self.model.train()
        return self.ddp(*batch), tokens

    def decode(self, model: Seq2Seq, split: Encoded, limit: int | None = None,
               beam: int = 1) -> dict:
        sources, refs = split.sources[:limit], split.references[:limit]
        outs = decode_sources(model, sources, self.src, self.tgt, beam=beam,
                              max_len=self.max_len, length_penalty=self.cfg.length_penalty)
        return score_outputs(outs, refs, bleu=False)

    @torch.no_grad()
    def _validate_loss(self) -> tuple[float, dict[str, float]]:
        self.model.eval()
        total = count = 0.0
        pairs = self.val_set.pairs
        for i in range(0, len(pairs), 256):
            batch = make_batch(pairs[i:i + 256])
            n = int(batch[3].sum()) - len(batch[3])
            total += self.model.loss(*batch).item() * n
            count += n
        scores = self.decode(self.model, self.val_set, self.cfg.val_limit)
        self.model.train()
        return total / count, {"wer": scores["word_error_rate"],
                               "ter": scores["token_error_rate"]}

    def _selection(self, val_loss: float, metrics: dict[str, float]) -> float:
        return metrics["wer"] + 1e-6 * min(val_loss, 1e5)    # WER; the loss breaks ties

    def _payload_extra(self) -> dict:
        return {"vocab": vocab_json(self.src, self.tgt), "data_sha256": self.pairs.sha256(),
                "max_len": self.max_len}

    def _run_files(self) -> dict[str, str]:
        d = json.loads(vocab_json(self.src, self.tgt))
        return {"vocab.json": json.dumps(d, indent=1) + "\n"}

    def _intro(self) -> str:
        cfg = self.cfg
        n = sum(p.numel() for p in self.model.parameters())
        return (f"{'resuming' if self.resume else 'training'} Bi{cfg.cell.upper()} encoder + "
                f"{cfg.attention} attention decoder, {cfg.layers}×{cfg.hidden} ({n:,} "
                f"parameters) on {self.pairs.name}: {len(self.train_set.entries):,} training, "
                f"{len(self.val_set.entries):,} validation and {len(self.test_set.entries):,} "
                f"test sources; vocabularies {len(self.src)} → {len(self.tgt)}; "
                f"{self.total_steps} steps of {cfg.batch}; run {self.run_dir}")

    def plot_title(self) -> str:
        return f"{self.cfg.name}: seq2seq Bi{self.cfg.cell.upper()} + {self.cfg.attention}"

    def _result(self, progress: Progress) -> Seq2SeqResult:
        if self.rank != 0:
            return Seq2SeqResult(self.run_dir, self.best_step, {}, None)
        model = load_seq2seq(self.run_dir).model
        val = self.decode(model, self.val_set)
        test = evaluate_split(model, self.test_set, self.src, self.tgt, self.cfg,
                              self.max_len, self.cfg.beam)
        test = {"split": "test", "checkpoint_step": self.best_step, **test}
        (self.run_dir / "test.json").write_text(json.dumps(test, indent=1) + "\n")
        self._log({"step": self.step, "checkpoint_step": self.best_step,
                   "test_wer": test["word_error_rate"], "test_ter": test["token_error_rate"]})
        progress.write(
            f"best checkpoint: step {self.best_step} (validation WER "
            f"{val['word_error_rate']:.4f}, TER {val['token_error_rate']:.4f})\n"
            f"test ({test['sources']:,} sources, beam {self.cfg.beam}): WER "
            f"{test['word_error_rate']:.4f}, TER {test['token_error_rate']:.4f} → "
            f"{self.run_dir / 'test.json'}")
        return Seq2SeqResult(self.run_dir, self.best_step, val, test)


def evaluate_split(model: Seq2Seq, split: Encoded, src: Vocab, tgt: Vocab,
                   cfg: Seq2SeqConfig, max_len: int, beam: int, *,
                   no_stress: bool = False) -> dict:
    """Decode a split and score it; ``no_stress`` scores outputs and references with their
    stress digits removed (:func:`strip_stress`)."""
    outs = decode_sources(model, split.sources, src, tgt, beam=beam, max_len=max_len,
                          length_penalty=cfg.length_penalty)
    refs = split.references
    if no_stress:
        outs = [strip_stress(o) for o in outs]
        refs = [[strip_stress(r) for r in rs] for rs in refs]
    bleu = cfg.target_tokens == "word"
    return {**score_outputs(outs, refs, bleu=bleu, detok=cfg.target_tokens), "beam": beam,
            "stress": not (no_stress or cfg.no_stress)}


# --- using a run ------------------------------------------------------------------------------

@dataclass
class Seq2SeqRun:
    model: Seq2Seq
    config: Seq2SeqConfig
    source_vocab: Vocab
    target_vocab: Vocab
    max_len: int
    step: int

    def translate(self, texts: Sequence[str], beam: int = 1, *,
                  max_len: int | None = None, attention: bool = False):
        """Each text's output text (and with ``attention``, (source tokens, output tokens,
        α) per text)."""
        cfg = self.config
        lower = cfg.lowercase or cfg.data is None        # CMUdict's words are lower case
        sources = [tokenize(t.lower() if lower else t, cfg.source_tokens) for t in texts]
        got = decode_sources(self.model, sources, self.source_vocab, self.target_vocab,
                             beam=beam, max_len=max_len or self.max_len,
                             length_penalty=cfg.length_penalty, attention=attention)
        if not attention:
            return [detokenize(o, cfg.target_tokens) for o in got]
        outs, alphas = got
        return [(s, o, a) for s, o, a in zip(sources, outs, alphas)]


def load_seq2seq(run_dir: str | Path, which: str = "best") -> Seq2SeqRun:
    cfg, payload = load_run(run_dir, Seq2SeqConfig, "seq2seq", which)
    try:
        src, tgt = vocabs_from_json(payload["vocab"])
        model = build_model(cfg, src, tgt)
        model.load_state_dict(payload["model"])
        max_len = int(payload["max_len"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"the checkpoint of {run_dir} is not a seq2seq run's: {e}"
                              ) from None
    return Seq2SeqRun(model.eval(), cfg, src, tgt, max_len, int(payload["step"]))


def evaluate_run(run_dir: str | Path, data: str | None = None, beam: int = 1, *,
                 no_stress: bool = False) -> dict:
    """Scores of a run's best checkpoint on a pairs file, or on its own test split."""
    run = load_seq2seq(run_dir)
    cfg = run.config
    if data is None:
        _, (_, _, entries) = run_splits(cfg)
        what = f"test split of {CMUDICT if cfg.data is None else cfg.data}"
    else:
        entries, what = list(load_pairs(data).entries), str(data)
    split = encode_split(entries, cfg, run.source_vocab, run.target_vocab)
    scores = evaluate_split(run.model, split, run.source_vocab, run.target_vocab, cfg,
                            run.max_len, beam, no_stress=no_stress)
    return {"data": what, "checkpoint_step": run.step, **scores}


def resume_seq2seq_config(run_dir: str | Path, overrides: dict) -> Seq2SeqConfig:
    return resume_run_config(run_dir, overrides, Seq2SeqConfig, RESUMABLE)
