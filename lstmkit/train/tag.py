r"""Sequence tagging (NER, chunking, POS) with a BiLSTM-CRF: ``lstmkit tag``.

    from lstmkit.train.tag import TagConfig, TagTrainer
    result = TagTrainer(TagConfig(train="train.conll", dev="dev.conll"), "runs/ner").fit()
    result = TagTrainer(TagConfig(corpus="wnut16"), "runs/wnut16").fit()   # built-in

Without a training file the data is a built-in corpus (:mod:`lstmkit.tagging.corpora`,
``wnut16`` unless ``corpus`` names another) with its train/dev/test split; ``dev`` and
``test`` files, if given, replace those parts.

The model is :class:`lstmkit.tagging.Tagger`; its vocabularies (words, characters, tags) are
built from the training file and saved in the run (``vocab.json`` and every checkpoint).
Each step draws ``batch`` training sentences at random (from the step number, so a resumed
run continues exactly). Every ``eval_every`` steps the dev file (or, without one, a tenth of
the training sentences held out) is tagged; the best checkpoint is the one with the highest
entity F1 on it (token accuracy when the tags are not chunk tags, e.g. UPOS). The test file
is scored once at the end, with that checkpoint, into ``test.json``.

Entity scores count a predicted chunk as right when its type, start and end all match
(CoNLL's conlleval; :mod:`seqeval`'s default mode). During training they are computed with
:func:`lstmkit.tagging.chunks`; ``test.json`` and :func:`evaluate_file` use seqeval.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..tagging import (
    ConllError,
    Sentence,
    Tagger,
    Vocab,
    char_vocab,
    chunks,
    load_embeddings,
    make_batch,
    read_conll,
    read_conllu,
    tag_vocab,
    word_vocab,
)
from ..tagging.conll import SCHEMES, parse_tag
from ..tagging.corpora import CORPORA, DEFAULT, load_corpus
from ..tagging.model import OUTPUTS
from .checkpoint import CheckpointError
from .config import SequenceTaskConfig
from .loop import TrainerBase, load_run, resume_run_config
from .progress import Progress

FORMATS = ("conll", "conllu")
RESUMABLE = ("steps", "eval_every", "log_every", "quiet")


@dataclass
class TagConfig(SequenceTaskConfig):
    """Everything that decides a tagging run (saved as ``config.json``): the model and
    optimisation fields of :class:`SequenceTaskConfig` with a tagger's defaults, then the
    data and the tagger's own fields."""

    # the shared fields, with a tagger's defaults (Lample et al. 2016 sizes)
    hidden: int = 100
    dropout: float = 0.5
    steps: int = 1000
    batch: int = 16                        # sentences per step, over all processes
    # data
    train: str | None = None               # none: the built-in corpus
    corpus: str | None = None              # built-in corpus (tagging.corpora); set without train
    dev: str | None = None                 # none: the corpus's dev part, or a tenth of train
    test: str | None = None                # scored once at the end (none: the corpus's test)
    format: str | None = None              # conll | conllu; None: from each file's extension
    column: int | str | None = None        # tag column: index or CoNLL-U name (-1 / "upos")
    scheme: str | None = None              # convert chunk tags to bio | bioes; None: as read
    # the tagger
    output: str = "crf"
    chars: bool = True                     # the character BiLSTM
    word_dim: int = 50
    char_dim: int = 25
    char_hidden: int = 25
    embeddings: str | None = None          # word2vec/GloVe text file, word_dim values a word
    unk_replace: float = 0.5               # training: a word seen once → <unk> with this p

    def __post_init__(self) -> None:
        if self.train is None and self.corpus is None:
            self.corpus = DEFAULT          # saved as chosen, so a resume reads the same data
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"invalid tag configuration: {what}")

        if self.train is not None and self.corpus is not None:
            raise ValueError(f"give a training file or a built-in corpus, not both (train "
                             f"{self.train!r}, corpus {self.corpus!r})")
        need(self.corpus is None or self.corpus in CORPORA,
             f"corpus must be one of {sorted(CORPORA)}, got {self.corpus!r}")
        self._check_common(need)
        need(self.format is None or self.format in FORMATS,
             f"format must be one of {FORMATS}, got {self.format!r}")
        need(self.scheme is None or self.scheme in SCHEMES,
             f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        need(0 <= self.unk_replace < 1,
             f"unk_replace must be in [0, 1), got {self.unk_replace}")
        need(self.output in OUTPUTS, f"output must be one of {OUTPUTS}, got {self.output!r}")
        for name in ("layers", "hidden", "word_dim", "char_dim", "char_hidden", "steps",
                     "batch", "log_every"):
            need(getattr(self, name) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")

    @property
    def name(self) -> str:
        return self.corpus if self.train is None else Path(self.train).stem

    def source(self, part: str) -> str:
        """What ``part`` ("train", "dev", "test") is read from: a path or ``corpus:part``."""
        path = getattr(self, part)
        return str(path) if path is not None else f"{self.corpus}:{part}"


def read_parts(cfg: TagConfig) -> tuple[list[Sentence], list[Sentence] | None,
                                        list[Sentence] | None]:
    """(train, dev, test) sentences: files where ``cfg`` names them, else the parts of its
    built-in corpus; dev and test are None where there is neither."""
    parts = load_corpus(cfg.corpus, cfg.scheme) if cfg.train is None else {}
    return tuple(read_tagged(getattr(cfg, k), cfg) if getattr(cfg, k) is not None
                 else parts.get(k) for k in ("train", "dev", "test"))


# --- files ------------------------------------------------------------------------------------

def file_format(path: str | Path, given: str | None = None) -> str:
    """``given``, or "conllu" for a ``.conllu`` file and "conll" for any other."""
    return given or ("conllu" if str(path).lower().endswith(".conllu") else "conll")


def read_tagged(path: str | Path, cfg: TagConfig) -> list[Sentence]:
    """The sentences of ``path`` as ``cfg`` reads them (format, tag column, scheme);
    ConllError for a missing or unreadable file too."""
    fmt = file_format(path, cfg.format)
    try:
        if fmt == "conllu":
            return read_conllu(path, "upos" if cfg.column is None else cfg.column, cfg.scheme)
        return read_conll(path, -1 if cfg.column is None else cfg.column, cfg.scheme)
    except OSError as e:
        raise ConllError(f"{path}: cannot read: {e.strerror or e}") from None


def read_tokens(path: str | Path, cfg: TagConfig) -> list[Sentence]:
    """The sentences of a file to tag: as :func:`read_tagged` reads them, tags kept as they
    are; a plain CoNLL file may also hold the tokens alone (one column)."""
    plain = TagConfig(**{**cfg.__dict__, "scheme": None})
    try:
        return read_tagged(path, plain)
    except ConllError as e:
        if file_format(path, cfg.format) != "conll" or "missing tag column" not in str(e):
            raise
    sentences = read_conll_tokens(path)
    return sentences


def read_conll_tokens(path: str | Path) -> list[Sentence]:
    """Sentences of a one-token-per-line file (blank lines between sentences), tags "_"."""
    found: list[Sentence] = []
    rows: list[list[str]] = []
    first = 0
    text = Path(path).read_text(encoding="utf-8")
    for n, line in enumerate(text.split("\n") + [""], start=1):
        cols = line.split()
        if cols and cols[0] != "-DOCSTART-":
            first = first if rows else n
            rows.append(cols)
        elif rows:
            found.append(Sentence([r[0] for r in rows], ["_"] * len(rows), rows, (), first))
            rows = []
    if not found:
        raise ConllError(f"{path}:1: no sentences in the file")
    return found


def is_chunked(tags: Sequence[str]) -> bool:
    """Whether every tag is a chunk tag (``O``, ``B-X``, ``I-X``, ``E-X``, ``S-X``)."""
    try:
        for tag in tags:
            parse_tag(tag)
    except ValueError:
        return False
    return True


# --- scores -----------------------------------------------------------------------------------

def chunk_scores(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Token accuracy and entity precision, recall and F1 (exact type and span), without
    seqeval: what training reports on the dev set."""
    right = total = found = gold = correct = 0
    for t, p in zip(true, pred):
        right += sum(a == b for a, b in zip(t, p))
        total += len(t)
        tc, pc = set(chunks(t)), set(chunks(p))
        found, gold, correct = found + len(pc), gold + len(tc), correct + len(tc & pc)
    precision = correct / found if found else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": right / max(total, 1), "precision": precision, "recall": recall,
            "f1": f1}


def _seqeval():
    try:
        import seqeval.metrics as metrics
    except ImportError:
        raise ImportError("entity scores need the seqeval package: pip install seqeval") from None
    return metrics


def seqeval_scores(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                   chunked: bool = True) -> dict:
    """``accuracy`` (tokens) and, for chunk tags, entity ``precision``, ``recall``, ``f1``
    and ``per_type`` {type: {precision, recall, f1, support}} by seqeval (default mode,
    zero_division=0); these are None for other tags (POS)."""
    right = sum(a == b for t, p in zip(true, pred) for a, b in zip(t, p))
    total = sum(len(t) for t in true)
    out: dict = {"accuracy": right / max(total, 1), "precision": None, "recall": None,
                 "f1": None, "per_type": None, "tokens": total, "sentences": len(true)}
    if not chunked:
        return out
    m = _seqeval()
    true, pred = [list(t) for t in true], [list(p) for p in pred]
    out["precision"] = float(m.precision_score(true, pred, zero_division=0))
    out["recall"] = float(m.recall_score(true, pred, zero_division=0))
    out["f1"] = float(m.f1_score(true, pred, zero_division=0))
    report = m.classification_report(true, pred, output_dict=True, zero_division=0)
    out["per_type"] = {k: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                           "f1": float(v["f1-score"]), "support": int(v["support"])}
                       for k, v in sorted(report.items()) if not k.endswith(" avg")}
    return out


# --- training ---------------------------------------------------------------------------------

@dataclass
class TagResult:
    run_dir: Path
    best_step: int
    dev: dict                              # chunk_scores of the best checkpoint on dev
    test: dict | None                      # seqeval_scores on the test file


def build_tagger(cfg: TagConfig, words: Vocab, chars: Vocab | None, tags: Vocab,
                 embeddings: Tensor | None = None) -> Tagger:
    kwargs = {k: True for k in ("peephole", "coupled") if getattr(cfg, k)}
    kwargs["backend"] = cfg.backend
    return Tagger(len(words), len(tags), len(chars) if chars is not None else 0,
                  word_dim=cfg.word_dim, char_dim=cfg.char_dim, char_hidden=cfg.char_hidden,
                  hidden_size=cfg.hidden, num_layers=cfg.layers, dropout=cfg.dropout,
                  cell=cfg.cell, output=cfg.output, tags=tags.itos, scheme=cfg.scheme,
                  embeddings=embeddings, **kwargs)


def vocab_json(words: Vocab, chars: Vocab | None, tags: Vocab) -> str:
    return json.dumps({"words": words.to_dict(), "chars": chars and chars.to_dict(),
                       "tags": tags.to_dict()})


def vocabs_from_json(text: str) -> tuple[Vocab, Vocab | None, Vocab]:
    d = json.loads(text)
    chars = Vocab.from_dict(d["chars"]) if d["chars"] else None
    return Vocab.from_dict(d["words"]), chars, Vocab.from_dict(d["tags"])


@torch.no_grad()
def tag_sentences(model: Tagger, sentences: Sequence[Sentence], words: Vocab,
                  chars: Vocab | None, tags: Vocab, batch: int = 64) -> list[list[str]]:
    """The predicted tags of each sentence, in eval mode."""
    was = model.training
    model.eval()
    out: list[list[str]] = []
    for i in range(0, len(sentences), batch):
        b = make_batch([(s.tokens, None) for s in sentences[i:i + batch]], words, chars)
        out.extend(tags.decode(p) for p in model.predict(b))
    model.train(was)
    return out


def _sha256(*sets: Sequence[Sentence]) -> str:
    h = hashlib.sha256()
    for sentences in sets:
        for tokens, tags in sentences:
            h.update(json.dumps([tokens, tags]).encode())
        h.update(b"|")
    return h.hexdigest()


def singletons(sentences: Sequence[Sentence], words: Vocab) -> Tensor:
    """(len(words),) bool: the word indices seen exactly once in ``sentences``. A tagger
    whose vocabulary is every training word never sees <unk> in training; replacing these
    words by <unk> at random while training gives <unk> an embedding for the unseen words
    of dev and test (Lample et al. 2016, p = 0.5)."""
    counts = torch.bincount(torch.tensor([i for s in sentences for i in words.encode(s.tokens)],
                                         dtype=torch.long), minlength=len(words))
    once = counts == 1
    once[:2] = False                                  # never <pad> or <unk> itself
    return once


class _LossOf(nn.Module):
    """A tagger whose forward is its loss (what DistributedDataParallel wraps)."""

    def __init__(self, tagger: Tagger):
        super().__init__()
        self.tagger = tagger

    def forward(self, batch) -> Tensor:
        return self.tagger.loss(batch)


class TagTrainer(TrainerBase):
    """Train a tagger into ``run_dir``; score the test file (if any) once at the end."""

    unit, rate_key, command = "sent", "sentences_per_s", "lstmkit tag train"

    def __init__(self, config: TagConfig, run_dir: str | Path, *, resume: bool = False):
        super().__init__(config, run_dir, resume=resume)
        train, dev, self.test_set = read_parts(config)
        if dev is not None:
            self.fit_set, self.dev_set = train, dev
        else:
            if len(train) < 2:
                raise ConllError(f"{config.train}: one sentence; give --dev or more sentences")
            g = torch.Generator().manual_seed(config.seed)
            order = torch.randperm(len(train), generator=g).tolist()
            k = max(1, len(train) // 10)
            self.dev_set = [train[i] for i in sorted(order[:k])]
            self.fit_set = [train[i] for i in sorted(order[k:])]
        if self.test_set is not None:
            _seqeval()                             # fail now, not after training
        if config.batch % self.world:
            raise ValueError(f"batch ({config.batch} sentences) must be divisible by the "
                             f"number of processes ({self.world})")
        self.data_sha256 = _sha256(self.fit_set, self.dev_set)
        if self.payload is not None:
            if self.payload.get("data_sha256") != self.data_sha256:
                raise ConllError("the data differs from the data the run was started on; "
                                 "resume needs the same files")
            self.words, self.chars, self.tags = vocabs_from_json(self.payload["vocab"])
        else:
            self.words = word_vocab(self.fit_set)
            self.chars = char_vocab(self.fit_set) if config.chars else None
            self.tags = tag_vocab(self.fit_set)
        self.chunked = is_chunked(self.tags.itos)
        self.singletons = singletons(self.fit_set, self.words)
        embeddings = None
        if config.embeddings and self.payload is None:
            try:
                embeddings = load_embeddings(
                    config.embeddings, self.words, config.word_dim,
                    generator=torch.Generator().manual_seed(config.seed))
            except OSError as e:
                raise ValueError(f"{config.embeddings}: cannot read: {e.strerror or e}") from None
        self.dev_known = self._known(self.dev_set, config.source(
            "dev" if dev is not None else "train"))
        torch.manual_seed(config.seed)
        model = build_tagger(config, self.words, self.chars, self.tags, embeddings)
        self._start(model, config.steps, config.eval_every)
        if self.world > 1:            # DDP syncs gradients through forward(): the loss
            self.ddp = nn.parallel.DistributedDataParallel(_LossOf(model))

    def _known(self, sentences: Sequence[Sentence], path: str) -> list[Sentence]:
        """The sentences whose tags the model knows (a dev loss needs them); warn once about
        the others."""
        known = [s for s in sentences if all(t in self.tags.stoi for t in s.tags)]
        if len(known) < len(sentences) and self.rank == 0:
            print(f"warning: {len(sentences) - len(known)} sentence(s) of {path} have tags "
                  "not seen in training; they count in the dev scores (as wrong) but not in "
                  "the dev loss", file=sys.stderr)
        return known

    def _batch_loss(self) -> tuple[Tensor, int]:
        share = self.cfg.batch // self.world
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
        idx = torch.randint(len(self.fit_set), (self.cfg.batch,), generator=g)
        idx = idx[self.rank * share:(self.rank + 1) * share].tolist()
        batch = make_batch([self.fit_set[i] for i in idx], self.words, self.chars, self.tags)
        if self.cfg.unk_replace > 0:            # so that <unk> is trained (Lample et al. 2016)
            drop = torch.rand(batch.words.shape, generator=g) < self.cfg.unk_replace
            drop &= self.singletons[batch.words]                           # (B, T)
            batch = replace(batch, words=batch.words.masked_fill(drop, self.words.unk))
        self.model.train()
        if self.world > 1:
            return self.ddp(batch), share
        return self.model.loss(batch), share

    def dev_scores(self, model: Tagger) -> dict:
        pred = tag_sentences(model, self.dev_set, self.words, self.chars, self.tags)
        gold = [s.tags for s in self.dev_set]
        if self.chunked and all(is_chunked(t) for t in gold):
            return chunk_scores(gold, pred)
        right = sum(a == b for t, p in zip(gold, pred) for a, b in zip(t, p))
        return {"accuracy": right / sum(map(len, gold))}

    @torch.no_grad()
    def _validate_loss(self) -> tuple[float, dict[str, float]]:
        scores = self.dev_scores(self.model)
        loss = 0.0
        if self.dev_known:
            self.model.eval()
            for i in range(0, len(self.dev_known), 64):
                b = make_batch(self.dev_known[i:i + 64], self.words, self.chars, self.tags)
                loss += self.model.loss(b).item() * len(b.lengths)
            self.model.train()
            loss /= len(self.dev_known)
        return loss, scores

    def _selection(self, val_loss: float, metrics: dict[str, float]) -> float:
        return -metrics["f1"] if "f1" in metrics else -metrics["accuracy"]

    def _payload_extra(self) -> dict:
        return {"vocab": vocab_json(self.words, self.chars, self.tags),
                "data_sha256": self.data_sha256}

    def _run_files(self) -> dict[str, str]:
        d = json.loads(vocab_json(self.words, self.chars, self.tags))
        return {"vocab.json": json.dumps(d, indent=1) + "\n"}

    def _intro(self) -> str:
        cfg = self.cfg
        n = sum(p.numel() for p in self.model.parameters())
        chars = f" + char Bi{cfg.cell.upper()}" if cfg.chars else ""
        return (f"{'resuming' if self.resume else 'training'} Bi{cfg.cell.upper()}{chars}-"
                f"{cfg.output} {cfg.layers}×{cfg.hidden} ({n:,} parameters) on {cfg.name}: "
                f"{len(self.fit_set)} training and {len(self.dev_set)} dev sentences, "
                f"{len(self.words):,} words, {len(self.tags)} tags; {self.total_steps} steps "
                f"of {cfg.batch}; run {self.run_dir}")

    def plot_title(self) -> str:
        return f"{self.cfg.name}: Bi{self.cfg.cell.upper()}-{self.cfg.output}"

    def _result(self, progress: Progress) -> TagResult:
        if self.rank != 0:                         # rank 0 scores and writes
            return TagResult(self.run_dir, self.best_step, {}, None)
        model, *_ = load_tagger(self.run_dir)
        dev = self.dev_scores(model)
        test = None
        if self.test_set is not None:
            pred = tag_sentences(model, self.test_set, self.words, self.chars, self.tags)
            test = seqeval_scores([s.tags for s in self.test_set], pred, self.chunked)
            test = {"file": self.cfg.source("test"), "checkpoint_step": self.best_step, **test}
            (self.run_dir / "test.json").write_text(json.dumps(test, indent=1) + "\n")
            self._log({"step": self.step, "checkpoint_step": self.best_step,
                       **{f"test_{k}": v for k, v in test.items()
                          if k in ("accuracy", "f1") and v is not None}})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in dev.items())
        line = f"best checkpoint: step {self.best_step} (dev {shown})"
        if test is not None:
            f1 = f", F1 {test['f1']:.4f}" if test["f1"] is not None else ""
            line += (f"\ntest: accuracy {test['accuracy']:.4f}{f1} → "
                     f"{self.run_dir / 'test.json'}")
        progress.write(line)
        return TagResult(self.run_dir, self.best_step, dev, test)


def load_tagger(run_dir: str | Path, which: str = "best"
                ) -> tuple[Tagger, TagConfig, Vocab, Vocab | None, Vocab]:
    """(model in eval mode, configuration, words, chars, tags) of a ``tag`` run."""
    cfg, payload = load_run(run_dir, TagConfig, "tag", which)
    try:
        words, chars, tags = vocabs_from_json(payload["vocab"])
        model = build_tagger(cfg, words, chars, tags)
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"the checkpoint of {run_dir} is not a tag run's: {e}") from None
    return model.eval(), cfg, words, chars, tags


def predict_file(run_dir: str | Path, path: str | Path) -> tuple[list[Sentence], list[list[str]],
                                                                 str]:
    """(sentences, predicted tags, format) of the file ``path`` with a run's best checkpoint."""
    model, cfg, words, chars, tags = load_tagger(run_dir)
    sentences = read_tokens(path, cfg)
    return sentences, tag_sentences(model, sentences, words, chars, tags), file_format(
        path, cfg.format)


def evaluate_file(run_dir: str | Path, path: str | Path | None = None) -> dict:
    """:func:`seqeval_scores` of a run's best checkpoint on the tagged file ``path``, plus
    ``unknown_tags`` (gold tags the model does not know; counted as wrong, with a warning).
    Without ``path``: the run's own test set (its test file, or its built-in corpus's test
    part)."""
    model, cfg, words, chars, tags = load_tagger(run_dir)
    if path is None:
        if cfg.test is None and cfg.corpus is None:
            raise ValueError(f"{run_dir} was trained on a file without a test file; give the "
                             f"file to score (--file)")
        path = cfg.source("test")
        sentences = (read_tagged(cfg.test, cfg) if cfg.test is not None
                     else load_corpus(cfg.corpus, cfg.scheme)["test"])
    else:
        sentences = read_tagged(path, cfg)
    chunked = is_chunked(tags.itos)
    if chunked:
        _seqeval()
    pred = tag_sentences(model, sentences, words, chars, tags)
    gold = [s.tags for s in sentences]
    unknown = sorted({t for g in gold for t in g if t not in tags.stoi})
    if unknown:
        n = sum(t not in tags.stoi for g in gold for t in g)
        print(f"warning: {n} token(s) of {path} have tags the model does not know "
              f"({', '.join(unknown[:10])}{', …' if len(unknown) > 10 else ''}); they count "
              "as wrong", file=sys.stderr)
    out = seqeval_scores(gold, pred, chunked and is_chunked(unknown))
    return {"file": str(path), **out, "unknown_tags": unknown}


def resume_tag_config(run_dir: str | Path, overrides: dict) -> TagConfig:
    """The configuration of the run in ``run_dir``, with the fields of ``overrides`` that
    may change on resume (see :data:`RESUMABLE`)."""
    return resume_run_config(run_dir, overrides, TagConfig, RESUMABLE)
