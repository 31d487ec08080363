"""The resolved configuration of a language-model run, saved as ``config.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from .variants import GREFF_VARIANTS

CELLS = ("lstm", "gru", "rnn", "mut1", "mut2", "mut3",
         "slstm", "mlstm",                         # xLSTM (Beck et al. 2024): lstmkit.sLSTM/mLSTM
         "mingru", "minlstm")                      # Feng et al. 2024: lstmkit.minGRU/minLSTM
TORCH_CELLS = ("lstm", "gru", "rnn")               # those torch.nn has (impl="torch")
MUT_CELLS = {"mut1": 1, "mut2": 2, "mut3": 3}      # Jozefowicz et al. 2015: lstmkit.MUT
HEADS = {"slstm": 4, "mlstm": 4}                   # num_heads of the head-wise cells
MIN_RNN_CELLS = ("mingru", "minlstm")              # Feng et al. 2024 (no weight_hh)
IMPLS = ("lstmkit", "torch")
SCHEDULES = ("cosine", "constant")

# what `--resume` may change; everything else is fixed by the run being resumed
RESUMABLE = ("steps", "epochs", "eval_every", "log_every", "sample_length", "quiet")


class RunConfig:
    """What every run configuration (train, forecast, classify) shares: JSON in and out,
    and the checks of the model and optimisation fields they have in common."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def _check_common(self, need) -> None:
        need(self.cell in CELLS, f"cell must be one of {CELLS}, got {self.cell!r}")
        need(self.lr_schedule in SCHEDULES, f"lr_schedule must be one of {SCHEDULES}, got "
                                            f"{self.lr_schedule!r}")
        need(not (self.peephole or self.coupled) or self.cell == "lstm",
             f"peephole/coupled are LSTM keywords; cell is {self.cell!r}")
        need(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.clip >= 0, f"clip must be ≥ 0 (0 = off), got {self.clip}")
        need(self.warmup >= 0, f"warmup must be ≥ 0, got {self.warmup}")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got "
                                          f"{self.min_lr_ratio}")
        need(self.eval_every is None or self.eval_every >= 1, "eval_every must be ≥ 1")


@dataclass
class SequenceTaskConfig(RunConfig):
    """The model and optimisation fields that ``forecast`` and ``classify`` share (their
    own data fields follow in the subclasses)."""

    # model
    cell: str = "lstm"
    peephole: bool = False
    coupled: bool = False
    layers: int = 1
    hidden: int = 64
    dropout: float = 0.0
    backend: str = "auto"
    # optimisation
    steps: int = 500
    batch: int = 32                        # windows or sequences per step, all processes
    lr: float = 3e-3
    lr_schedule: str = "cosine"
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    clip: float = 1.0
    seed: int = 0
    # reporting
    eval_every: int | None = None          # default: 20 validations per run
    log_every: int = 20
    quiet: bool = False


@dataclass
class TrainConfig(RunConfig):
    """Everything that decides a run. Defaults: the README's main job, a one-layer
    character LSTM on the built-in corpus that trains in a few minutes on 2 cores."""

    # data
    data: list[str] = field(default_factory=list)   # files or folders; [] = built-in corpus
    max_chars: int | None = 2_000_000               # read at most this many characters
    tokens: str = "char"                            # "char" or "word"
    vocab_size: int = 10_000                        # word level: most frequent words kept
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    # model
    cell: str = "lstm"
    peephole: bool = False
    coupled: bool = False
    variant: str | None = None                      # Greff et al. 2015: variants.GREFF_VARIANTS
    forget_bias: float = 0.0                        # LSTM: added to the forget-gate biases at init
    layers: int = 1
    hidden: int = 256
    embed: int = 64
    dropout: float = 0.0                            # on embeddings, between layers, before decoder
    impl: str = "lstmkit"                           # "lstmkit" or "torch" (torch.nn, for parity)
    backend: str = "auto"                           # lstmkit backend
    # optimisation
    seq_len: int = 100                              # truncated BPTT length T
    batch: int = 32                                 # global number of streams B
    steps: int | None = 1500                        # optimizer steps (or use epochs)
    epochs: float | None = None
    lr: float = 3e-3
    lr_schedule: str = "cosine"
    warmup: int = 50                                # linear warm-up steps
    min_lr_ratio: float = 0.1                       # cosine ends at lr · min_lr_ratio
    weight_decay: float = 0.0
    clip: float = 1.0                               # gradient-norm clip (0 = off)
    seed: int = 0
    # reporting
    eval_every: int | None = None                   # default: 10 evaluations per run
    log_every: int = 10
    sample_length: int = 300                        # characters/words printed per sample
    quiet: bool = False

    def __post_init__(self) -> None:
        self.data = [str(p) for p in self.data]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field (an unknown cell, tokens, schedule or
        implementation, a size or rate out of range, keywords that do not fit the cell)."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"invalid training configuration: {what}")

        self._check_common(need)
        need(self.impl in IMPLS, f"impl must be one of {IMPLS}, got {self.impl!r}")
        need(self.tokens in ("char", "word"), f"tokens must be 'char' or 'word', got "
                                              f"{self.tokens!r}")
        need(not (self.impl == "torch" and (self.peephole or self.coupled)),
             "torch.nn has no peephole or coupled LSTM; use impl='lstmkit'")
        need(self.impl == "lstmkit" or self.cell in TORCH_CELLS,
             f"torch.nn has no {self.cell} cell; use impl='lstmkit'")
        need(self.cell not in ("mut1", "mut2") or self.embed == self.hidden,
             f"{self.cell} adds its input x_t to an H-vector, so embed must equal hidden; got "
             f"embed={self.embed}, hidden={self.hidden}")
        heads = HEADS.get(self.cell, 1)
        need(self.hidden % heads == 0,
             f"{self.cell} splits hidden into {heads} heads, so hidden must be divisible by "
             f"{heads}; got hidden={self.hidden}")
        need(not self.forget_bias or (self.cell == "lstm" and not self.coupled
                                      and self.variant not in ("nfg", "cifg")),
             f"forget_bias needs an LSTM with a forget gate (not coupled/CIFG, not the nfg "
             f"variant); got cell={self.cell!r}, coupled={self.coupled}, "
             f"variant={self.variant!r}")
        need(self.variant is None or (self.cell == "lstm" and self.impl == "lstmkit"
                                      and self.variant in GREFF_VARIANTS),
             f"variant must be one of {tuple(GREFF_VARIANTS)} with cell='lstm' and "
             f"impl='lstmkit', got {self.variant!r} (cell={self.cell!r}, impl={self.impl!r})")
        for name in ("layers", "hidden", "embed", "seq_len", "batch", "vocab_size",
                     "log_every", "sample_length"):
            need(getattr(self, name) >= 1, f"{name} must be ≥ 1, got {getattr(self, name)}")
        need(0 <= self.val_fraction < 0.5 and 0 <= self.test_fraction < 0.5,
             "val_fraction and test_fraction must be in [0, 0.5)")
        need(self.val_fraction > 0, "val_fraction must be > 0 (validation picks the best "
                                    "checkpoint)")
        need((self.steps is None) != (self.epochs is None),
             "give exactly one of steps and epochs")
        need(self.steps is None or self.steps >= 1, f"steps must be ≥ 1, got {self.steps}")
        need(self.epochs is None or self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        need(self.max_chars is None or self.max_chars >= 100, "max_chars must be ≥ 100")
