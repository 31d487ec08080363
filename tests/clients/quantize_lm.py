"""Dynamic quantization of a word-level LSTM language model, as PyTorch's dynamic-quantization
tutorial does it (written here; it reproduces the tutorial's use of the API, not its code):
train the model of ``word_lm.py`` briefly, call

    torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)

and compare the saved ``state_dict`` size, the evaluation loss and the evaluation time of
the float and the quantized model (one thread, as the tutorial sets it).

    python quantize_lm.py --data DIR --out DIR

Prints ``size float``, ``size quantized`` (MB), ``loss float``, ``loss quantized``,
``seconds float``, ``seconds quantized`` and the quantized model's recurrent layer type.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn
from word_lm import Vocabulary, WordModel, columns, detach, evaluate


def size_mb(model: nn.Module, path: Path) -> float:
    torch.save(model.state_dict(), path)
    return path.stat().st_size / 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vocab = Vocabulary()
    train = columns(vocab.encode(args.data / "train.txt"), 20)
    test = columns(vocab.encode(args.data / "test.txt"), 1)
    model = WordModel("LSTM", len(vocab.index), 64, 64, 2, 0.0)
    hidden = model.init_hidden(20)
    for step, i in enumerate(range(0, train.shape[0] - 1, 20)):
        if step == args.steps:
            break
        x, y = train[i:i + 20], train[i + 1:i + 21]
        x = x[:y.shape[0]]
        hidden = detach(hidden)
        model.zero_grad()
        out, hidden = model(x, hidden)
        nn.functional.nll_loss(out.view(-1, model.ntoken), y.reshape(-1)).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        with torch.no_grad():
            for w in model.parameters():
                w.add_(w.grad, alpha=-20.0)
    model.eval()
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear},
                                                       dtype=torch.qint8)
    print("recurrent layer", type(quantized.rnn).__module__ + "." + type(quantized.rnn).__name__)
    for name, m in (("float", model), ("quantized", quantized)):
        print(f"size {name} {size_mb(m, args.out / f'{name}.pt'):.4f}")
        start = time.perf_counter()
        loss = evaluate(m, test, 25)
        print(f"seconds {name} {time.perf_counter() - start:.4f}")
        print(f"loss {name} {loss:.6f}")


if __name__ == "__main__":
    main()
