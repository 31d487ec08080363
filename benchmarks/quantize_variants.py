"""Dynamic quantization of the variants torch's quantized LSTM lacks: a word-level language
model with a projected, a peephole and a layer-normalised LSTM, trained briefly, then
``lstmkit.quantize_dynamic`` (int8 weights: the LSTM through
:class:`lstmkit.quantized.DynamicQuantized`, the decoder through torch's quantized Linear).

    python benchmarks/quantize_variants.py [--steps N] [--json PATH]

Prints, per variant, the saved ``state_dict`` size, the test loss and the evaluation time
(one thread, batch 1, as the dynamic-quantization tutorial measures) of the float and the
quantized model, and what torch's own ``quantize_dynamic`` does with the same layer written
as ``torch.nn.LSTM`` where torch.nn has it (projection: it builds a quantized LSTM without
the projection, which then fails at its first call; pytorch/pytorch#60008).
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import time
import warnings

import torch
from torch import nn

import lstmkit

VARIANTS = {
    "proj_size=64": {"proj_size": 64},
    "peephole": {"peephole": True},
    "layer_norm": {"layer_norm": True},
}


def corpus() -> tuple[torch.Tensor, torch.Tensor, int]:
    import argparse as a
    import shlex
    index: dict[str, int] = {}

    def encode(module) -> torch.Tensor:
        words = " <eos> ".join(ln for ln in inspect.getsource(module).splitlines()
                               if ln.strip()).split()
        return torch.tensor([index.setdefault(w, len(index)) for w in words])

    train, test = encode(a), encode(shlex)
    return train, test, len(index)


class LM(nn.Module):
    def __init__(self, ntoken: int, rnn: nn.Module, width: int):
        super().__init__()
        self.embed, self.rnn, self.out = nn.Embedding(ntoken, 128), rnn, nn.Linear(width, ntoken)

    def forward(self, x, hidden=None):
        y, hidden = self.rnn(self.embed(x), hidden)
        return self.out(y), hidden


def loss_and_seconds(model: nn.Module, data: torch.Tensor, bptt: int = 25) -> tuple[float, float]:
    model.eval()
    total, hidden = 0.0, None
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(data) - 1, bptt):
            x, y = data[i:i + bptt], data[i + 1:i + 1 + bptt]
            x = x[:len(y)]
            out, hidden = model(x[:, None], hidden)
            total += len(x) * nn.functional.cross_entropy(out.view(len(x), -1), y).item()
    return total / (len(data) - 1), time.perf_counter() - start


def size_mb(model: nn.Module) -> float:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--json")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", DeprecationWarning)
    torch.set_num_threads(1)
    train, test, ntoken = corpus()
    test = test[:3000]
    rows = []
    for name, kw in VARIANTS.items():
        torch.manual_seed(0)
        rnn = lstmkit.LSTM(128, 256, 2, **kw)
        model = LM(ntoken, rnn, kw.get("proj_size", 256))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        cols = train[:len(train) // 16 * 16].view(16, -1).t()
        for step in range(args.steps):
            i = (step * 25) % (cols.shape[0] - 26)
            out, _ = model.train()(cols[i:i + 25])
            loss = nn.functional.cross_entropy(out.reshape(-1, ntoken),
                                               cols[i + 1:i + 26].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        q = lstmkit.quantize_dynamic(model)
        row = {"variant": name, "trained_steps": args.steps}
        for label, m in (("float", model), ("int8", q)):
            test_loss, seconds = loss_and_seconds(m, test)
            row[label] = {"size_mb": size_mb(m), "test_loss": test_loss, "seconds": seconds}
        if "proj_size" in kw:                       # what torch does with its own proj LSTM
            twin = LM(ntoken, nn.LSTM(128, 256, 2, proj_size=kw["proj_size"]), kw["proj_size"])
            twin.load_state_dict(model.state_dict())
            tq = torch.ao.quantization.quantize_dynamic(twin, {nn.LSTM, nn.Linear},
                                                        dtype=torch.qint8)
            try:
                loss_and_seconds(tq, test[:100])
                row["torch"] = "ran"
            except RuntimeError as e:
                row["torch"] = f"{type(tq.rnn).__name__} without projection; first call: " \
                               f"RuntimeError: {str(e).splitlines()[0]}"
        rows.append(row)
        f, i8 = row["float"], row["int8"]
        print(f"{name:<14} size {f['size_mb']:.2f} → {i8['size_mb']:.2f} MB   test loss "
              f"{f['test_loss']:.4f} → {i8['test_loss']:.4f}   eval {f['seconds']:.2f} → "
              f"{i8['seconds']:.2f} s" + (f"\n{'':<14} torch: {row['torch']}"
                                          if "torch" in row else ""), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
