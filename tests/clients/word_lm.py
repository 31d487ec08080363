"""A word-level language model written against torch.nn, in the way pytorch/examples'
``word_language_model`` uses torch.nn's recurrent modules (this file is written here; it
reproduces that client's use of the API, not its code):

* an embedding, ``nn.LSTM``/``nn.GRU``/``nn.RNN`` with dropout between layers, a linear
  decoder; truncated BPTT with hidden states detached between batches; plain SGD with
  gradient-norm clipping;
* the best model saved whole with ``torch.save(model)`` and reloaded with ``torch.load``
  under ``torch.serialization.safe_globals`` naming torch.nn's classes, then
  ``flatten_parameters()``;
* plain ``torch.onnx.export(model, (tokens, hidden), path)``;
* sampling words one at a time from the reloaded model.

    python word_lm.py --data DIR --model LSTM --out DIR [--epochs N] [--dropout P]

DIR holds train.txt, valid.txt and test.txt (whitespace tokens). Prints ``valid loss``,
``test loss`` and ``sampled`` lines.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn as nn


class Vocabulary:
    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def encode(self, path: Path) -> torch.Tensor:
        ids = []
        for line in path.read_text(encoding="utf8").splitlines():
            for word in [*line.split(), "<eos>"]:
                ids.append(self.index.setdefault(word, len(self.index)))
        return torch.tensor(ids, dtype=torch.int64)


class WordModel(nn.Module):
    def __init__(self, kind: str, ntoken: int, emsize: int, nhid: int, nlayers: int,
                 dropout: float) -> None:
        super().__init__()
        self.kind, self.ntoken, self.nhid, self.nlayers = kind, ntoken, nhid, nlayers
        self.drop = nn.Dropout(dropout)
        self.embed = nn.Embedding(ntoken, emsize)
        if kind in ("LSTM", "GRU"):
            self.rnn = getattr(nn, kind)(emsize, nhid, nlayers, dropout=dropout)
        else:
            self.rnn = nn.RNN(emsize, nhid, nlayers, nonlinearity=kind.split("_")[1].lower(),
                              dropout=dropout)
        self.out = nn.Linear(nhid, ntoken)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.uniform_(self.out.weight, -0.1, 0.1)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens, hidden):
        y, hidden = self.rnn(self.drop(self.embed(tokens)), hidden)
        return torch.log_softmax(self.out(self.drop(y)), dim=-1), hidden

    def init_hidden(self, batch: int):
        w = next(self.parameters())
        h = w.new_zeros(self.nlayers, batch, self.nhid)
        return (h, w.new_zeros(self.nlayers, batch, self.nhid)) if self.kind == "LSTM" else h


def columns(data: torch.Tensor, batch: int) -> torch.Tensor:
    n = data.numel() // batch
    return data[:n * batch].view(batch, n).t().contiguous()


def detach(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(detach(v) for v in h)


def evaluate(model: WordModel, data: torch.Tensor, bptt: int) -> float:
    model.eval()
    total, hidden = 0.0, model.init_hidden(data.shape[1])
    with torch.no_grad():
        for i in range(0, data.shape[0] - 1, bptt):
            x, y = data[i:i + bptt], data[i + 1:i + 1 + bptt]
            x = x[:y.shape[0]]
            out, hidden = model(x, hidden)
            total += x.shape[0] * nn.functional.nll_loss(out.view(-1, model.ntoken),
                                                         y.reshape(-1)).item()
    return total / (data.shape[0] - 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="LSTM")
    p.add_argument("--emsize", type=int, default=24)
    p.add_argument("--nhid", type=int, default=24)
    p.add_argument("--nlayers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--bptt", type=int, default=20)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--lr", type=float, default=20.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1111)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    vocab = Vocabulary()
    train, valid, test = (vocab.encode(args.data / f"{s}.txt") for s in ("train", "valid", "test"))
    train, valid, test = columns(train, args.batch), columns(valid, 10), columns(test, 10)
    model = WordModel(args.model, len(vocab.index), args.emsize, args.nhid, args.nlayers,
                      args.dropout)
    path, best, lr = args.out / "model.pt", math.inf, args.lr
    for _ in range(args.epochs):
        model.train()
        hidden = model.init_hidden(args.batch)
        for i in range(0, train.shape[0] - 1, args.bptt):
            x, y = train[i:i + args.bptt], train[i + 1:i + 1 + args.bptt]
            x = x[:y.shape[0]]
            hidden = detach(hidden)
            model.zero_grad()
            out, hidden = model(x, hidden)
            loss = nn.functional.nll_loss(out.view(-1, model.ntoken), y.reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            with torch.no_grad():
                for w in model.parameters():
                    w.add_(w.grad, alpha=-lr)
        val = evaluate(model, valid, args.bptt)
        print(f"valid loss {val:.6f}")
        if val < best:
            torch.save(model, path)
            best = val
        else:
            lr /= 4
    with torch.serialization.safe_globals([WordModel, nn.Dropout, nn.Embedding, nn.Linear,
                                           nn.LSTM, nn.GRU, nn.RNN]):
        model = torch.load(path)
    model.rnn.flatten_parameters()
    print(f"test loss {evaluate(model, test, args.bptt):.6f}")
    model.eval()
    tokens = torch.zeros(args.bptt, 1, dtype=torch.int64)
    torch.onnx.export(model, (tokens, model.init_hidden(1)), str(args.out / "model.onnx"))
    words = list(vocab.index)
    token, hidden, sampled = torch.zeros(1, 1, dtype=torch.int64), model.init_hidden(1), []
    with torch.no_grad():
        for _ in range(30):
            out, hidden = model(token, hidden)
            token.fill_(torch.multinomial(out.view(-1).exp(), 1).item())
            sampled.append(words[token.item()])
    print("sampled", " ".join(sampled))


if __name__ == "__main__":
    main()
