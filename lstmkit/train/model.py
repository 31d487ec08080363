"""The language model: embedding → recurrent stack → linear decoder over the vocabulary."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import lstmkit

from .config import HEADS, MIN_RNN_CELLS, MUT_CELLS, TrainConfig
from .variants import GREFF_VARIANTS

State = Tensor | tuple[Tensor, Tensor]


def make_rnn(cfg: TrainConfig) -> nn.Module:
    """The recurrent stack: an lstmkit module, or torch.nn's for a parity run.

    Built with the same arguments either way, so under the same seed both start from the
    same weights (lstmkit draws its initial weights exactly as torch.nn does).
    """
    if cfg.impl == "torch":
        kw = dict(batch_first=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cfg.cell](
            cfg.embed, cfg.hidden, cfg.layers, **kw)
    else:
        rnn = build_recurrent(cfg.cell, cfg.embed, cfg.hidden, cfg.layers, dropout=cfg.dropout,
                              peephole=cfg.peephole, coupled=cfg.coupled, variant=cfg.variant,
                              backend=cfg.backend)
    if cfg.forget_bias:                         # after the uniform init, as Jozefowicz et al.
        add_forget_bias(rnn, cfg.forget_bias)
    return rnn


def add_forget_bias(lstm: nn.Module, value: float) -> None:
    """Add ``value`` to the forget-gate bias of every layer and direction (rows H…2H of
    ``bias_ih``; f's block when gates are absent), so the cell starts out remembering:
    Gers, Schmidhuber & Cummins 2000 suggest a positive forget bias, Jozefowicz, Zaremba &
    Sutskever 2015 recommend 1."""
    cell = getattr(lstm, "cell", None)                  # torch.nn.LSTM has none: i, f, g, o
    k = cell.gate_rows.index("f") if cell is not None else 1
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("bias_ih"):
                H = lstm.hidden_size
                p[k * H:(k + 1) * H] += value


def build_recurrent(cell: str, input_size: int, hidden: int, layers: int = 1, *,
                    dropout: float = 0.0, bidirectional: bool = False, peephole: bool = False,
                    coupled: bool = False, variant: str | None = None,
                    backend: str = "auto") -> nn.Module:
    """A batch-first lstmkit LSTM/GRU/RNN stack; ``dropout`` applies between layers only
    (ignored for one layer, without torch.nn's warning). ``variant`` names one of Greff et
    al. 2015's LSTM variants (:data:`lstmkit.train.variants.GREFF_VARIANTS`); cells
    ``mut1``–``mut3`` are :class:`lstmkit.MUT` (Jozefowicz et al. 2015), ``mlstm`` is
    :class:`lstmkit.mLSTM` and ``slstm`` :class:`lstmkit.sLSTM` with ``HEADS`` heads (Beck
    et al. 2024), ``mingru`` and
    ``minlstm`` :class:`lstmkit.minGRU` and :class:`lstmkit.minLSTM` (Feng et al. 2024)."""
    kw = dict(batch_first=True, dropout=dropout if layers > 1 else 0.0,
              bidirectional=bidirectional, backend=backend)
    if cell in MUT_CELLS and not (peephole or coupled or variant):
        return lstmkit.MUT(input_size, hidden, layers, **kw, variant=MUT_CELLS[cell])
    if cell in HEADS and not (peephole or coupled or variant):      # xLSTM, Beck et al. 2024
        module = lstmkit.sLSTM if cell == "slstm" else lstmkit.mLSTM
        return module(input_size, hidden, layers, **kw, num_heads=HEADS[cell])
    if cell in MIN_RNN_CELLS and not (peephole or coupled or variant):
        module = lstmkit.minGRU if cell == "mingru" else lstmkit.minLSTM
        return module(input_size, hidden, layers, **kw)
    if cell == "lstm":
        options = {"peephole": peephole, "coupled": coupled,
                   **GREFF_VARIANTS.get(variant or "np")}
        return lstmkit.LSTM(input_size, hidden, layers, **kw, **options)
    if peephole or coupled or variant:
        raise ValueError(f"peephole/coupled/variant are LSTM options; cell is {cell!r}")
    module = {"gru": lstmkit.GRU, "rnn": lstmkit.RNN}[cell]
    return module(input_size, hidden, layers, **kw)


class LanguageModel(nn.Module):
    """p(x_{t+1} | x_≤t): ``logits, state = model(ids, state)`` with ids (B, T) → (B, T, V)."""

    def __init__(self, vocab_size: int, cfg: TrainConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed)
        self.rnn = make_rnn(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.decoder = nn.Linear(cfg.hidden, vocab_size)

    def forward(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        x = self.drop(self.embed(ids))                           # (B, T, E)
        out, state = self.rnn(x, state)                          # (B, T, H)
        return self.decoder(self.drop(out)), state               # (B, T, V)


def detach_state(state: State | None) -> State | None:
    """Cut the graph between truncated-BPTT windows, keep the values."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def state_tensors(state: State | None) -> list[Tensor]:
    return [] if state is None else list(state) if isinstance(state, tuple) else [state]


def state_from_tensors(tensors: list[Tensor], cell: str) -> State | None:
    """The inverse of :func:`state_tensors`: one tensor (GRU, RNN, …) or a tuple (LSTM's
    (h, c), sLSTM's (h, c, n, m), mLSTM's (C, n, m))."""
    if not tensors:
        return None
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


@torch.no_grad()
def evaluate_loss(model: nn.Module, rows: Tensor, seq_len: int) -> tuple[float, int]:
    """Mean next-token cross-entropy (nats) over every target of ``rows`` (B, n), the
    hidden state carried through the windows as in training; and the number of targets."""
    from ..data.text import stream_batches

    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    for x, y in stream_batches(rows, seq_len):
        logits, state = model(x, state)
        total += nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(),
                                             reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total / count, count
