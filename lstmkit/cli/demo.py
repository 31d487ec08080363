"""``lstmkit demo``: build every cell, run it on a generated sequence, print its summary
and how closely it matches torch.nn."""

from __future__ import annotations

import argparse
import time

from ._args import positive_int


def add_parsers(sub) -> None:
    demo = sub.add_parser("demo", help="build every cell, run it on a generated sequence "
                                       "and print its summary")
    demo.add_argument("--steps", type=positive_int, default=50, help="sequence length T")
    demo.add_argument("--batch", type=positive_int, default=4, help="batch size B")
    demo.add_argument("--input-size", type=positive_int, default=8, help="input features I")
    demo.add_argument("--hidden", type=positive_int, default=16, help="hidden size H")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)


def _demo_models(input_size: int, hidden: int) -> list[tuple[str, object]]:
    import lstmkit
    modules = next(g for g in (4, 3, 2, 1) if hidden % g == 0)        # equal-size modules
    return [
        ("LSTM", lstmkit.LSTM(input_size, hidden)),
        ("LSTM, peephole", lstmkit.LSTM(input_size, hidden, peephole=True)),
        ("LSTM, coupled (CIFG)", lstmkit.LSTM(input_size, hidden, coupled=True)),
        ("LSTM, proj_size", lstmkit.LSTM(input_size, hidden, proj_size=hidden // 2)),
        ("LSTM, 2 layers, bidirectional", lstmkit.LSTM(input_size, hidden, 2,
                                                       bidirectional=True)),
        ("GRU", lstmkit.GRU(input_size, hidden)),
        ("GRU, reset_after=False", lstmkit.GRU(input_size, hidden, reset_after=False)),
        ("RNN, tanh", lstmkit.RNN(input_size, hidden)),
        ("RNN, relu", lstmkit.RNN(input_size, hidden, nonlinearity="relu")),
        ("LSTM, layer_norm", lstmkit.LSTM(input_size, hidden, layer_norm=True)),
        ("LSTM, no input gate (Greff NIG)", lstmkit.LSTM(input_size, hidden,
                                                          input_gate=False)),
        ("GRU, layer_norm", lstmkit.GRU(input_size, hidden, layer_norm=True)),
        (f"ClockworkRNN, {modules} modules", lstmkit.ClockworkRNN(input_size, hidden,
                                                                 num_modules=modules)),
        ("DepthGatedLSTM, 2 layers", lstmkit.DepthGatedLSTM(input_size, hidden, 2)),
        ("LSTM1997 (Hochreiter & Schmidhuber)", lstmkit.LSTM1997(input_size, hidden)),
        ("MUT3 (Jozefowicz et al.)", lstmkit.MUT(input_size, hidden, variant=3)),
        (f"sLSTM (xLSTM), {modules} heads", lstmkit.sLSTM(input_size, hidden,
                                                        num_heads=modules)),
        (f"mLSTM (xLSTM), {modules} heads", lstmkit.mLSTM(input_size, hidden,
                                                        num_heads=modules)),
        ("minGRU (Feng et al.)", lstmkit.minGRU(input_size, hidden)),
        ("minLSTM (Feng et al.)", lstmkit.minLSTM(input_size, hidden)),
        ("GridLSTM, time x depth, 2 layers", lstmkit.GridLSTM(input_size, hidden)),
    ]


def cmd_demo(args: argparse.Namespace) -> int:
    import math

    import torch

    import lstmkit

    torch.manual_seed(args.seed)
    T, B, I, H = args.steps, args.batch, args.input_size, args.hidden
    t = torch.arange(T, dtype=torch.float32)[:, None, None]
    phase = torch.rand(1, B, I) * 2 * math.pi
    x = torch.sin(0.2 * t + phase) + 0.1 * torch.randn(T, B, I)       # (T, B, I): noisy sines
    print(f"lstmkit {lstmkit.__version__} demo: a noisy sine sequence, T={T}, B={B}, I={I}, "
          f"H={H}\n")
    for title, model in _demo_models(I, H):
        start = time.perf_counter()
        with lstmkit.record(model) as rec:
            out, state = model(x)
            out.pow(2).mean().backward()
        ms = 1e3 * (time.perf_counter() - start)
        print(f"== {title}: {lstmkit.count_parameters(model):,} parameters, "
              f"forward+backward {ms:.1f} ms")
        print(lstmkit.summary(model))
        first = rec.layers[0]
        cell = getattr(model, "cell", None)       # mLSTM has none: its record names them
        names = cell.gates if cell is not None else [k for k in first.gates if k != "n"]
        gates = ", ".join(f"{g}={first[g].mean():.3f}" for g in names if g in first.keys())
        if gates:
            print(f"   mean gate activations, layer 0: {gates}")
        try:
            if not hasattr(model, "to_torch"):                  # mLSTM, GridLSTM
                raise ValueError("no torch.nn twin")
            reference = model.to_torch()
        except ValueError:
            print("   (no torch.nn equivalent: checked by the test suite against a hand "
                  "computation of its equations)\n")
            continue
        with torch.no_grad():
            ref_out, _ = reference(x)
        diff = (ref_out - out.detach()).abs().max().item()
        print(f"   max |output − torch.nn.{type(reference).__name__}| = {diff:.2e}\n")
    return 0
