"""The adding problem trained as Hochreiter & Schmidhuber (1997) did (§5.4, Experiment 4;
their Table 7), on the tiny C++ trainer :class:`lstmkit.ops.tiny1997.Tiny1997`.

The set-up (docs/long-time-lag.md, "Table 7", gives the sources and the readings chosen):

* data: :class:`lstmkit.data.synthetic.Adding1997` (lengths T … T + T/10, two marked values,
  markers −1 at the first and last step, target 0.5 + (X1 + X2)/4);
* network: 2 inputs, 2 memory blocks of 2 cells, one logistic output unit reading the cells
  only; gates and cells read the inputs, the cells and the gates of the step before, and a
  bias (93 weights); g ∈ [−2, 2], h ∈ [−1, 1], every other unit logistic;
* weights uniform in [−0.1, 0.1]; input-gate biases −3.0 (block 1) and −6.0 (block 2);
* online SGD, one update at the end of each sequence, learning rate 0.5, loss ½(y − t)²,
  the paper's truncated gradient;
* stop once the 2,000 most recent training sequences were all processed correctly
  (|y − t| < 0.04) and their mean squared error is below 0.01; then score 2,560 fresh test
  sequences (wrong: |y − t| ≥ 0.04).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import torch

from ..data.synthetic import Adding1997
from ..ops.tiny1997 import PAPER_SHAPE, Shape1997, Tiny1997

PAPER_TABLE7 = {   # T: (minimal lag, wrong of 2,560, training sequences until the stop)
    100: {"lag": 50, "wrong": 1, "sequences": 74_000},
    500: {"lag": 250, "wrong": 0, "sequences": 209_000},
    1000: {"lag": 500, "wrong": 1, "sequences": 853_000},
}
TEST_SIZE = 2560
TEST_SEED_OFFSET = 1_000_003          # the test stream's seed: seed + this (never trained on)


def _as_double(batch):
    return batch.x.to(torch.float64).contiguous(), batch.lengths, batch.y.to(torch.float64)


def _cat_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows of ``a`` then ``b``; padded (N, L, I) inputs are padded to the longer L (steps
    past a sequence's length are never read)."""
    if a.dim() == 3 and a.shape[1] != b.shape[1]:
        L = max(a.shape[1], b.shape[1])
        a, b = (torch.nn.functional.pad(t, (0, 0, 0, L - t.shape[1])) for t in (a, b))
    return torch.cat([a, b])


def score_adding(net: Tiny1997, T: int, seed: int, n: int = TEST_SIZE,
                 chunk: int = 512) -> dict:
    """Wrong predictions (|y − t| ≥ 0.04) and MSE on ``n`` fresh sequences."""
    task = Adding1997(T)
    gen = torch.Generator().manual_seed(seed + TEST_SEED_OFFSET)
    wrong, sq, done = 0, 0.0, 0
    while done < n:
        x, lengths, y = _as_double(task.sample(min(chunk, n - done), gen))
        err = net.predict(x, lengths) - y
        wrong += int((err.abs() >= 0.04).sum())
        sq += float((err * err).sum())
        done += len(y)
    return {"test_n": n, "test_wrong": wrong, "test_mse": sq / n}


def train_adding_1997(T: int, seed: int = 0, *, max_sequences: int | None = None,
                      max_seconds: float | None = 3600.0, lr: float = 0.5,
                      shape: Shape1997 = PAPER_SHAPE, window: int = 2000, tol: float = 0.04,
                      mse_stop: float = 0.01, n_test: int = TEST_SIZE, chunk: int | None = None,
                      log: Callable[[str], None] | None = None,
                      log_every: float = 30.0) -> dict:
    """Train one network on the 1997 adding problem until the paper's stop criterion (or a
    cap: ``max_sequences`` training sequences, ``max_seconds`` of wall time), then score
    ``n_test`` fresh sequences. Returns a JSON-ready dict (see the keys below)."""
    if not isinstance(T, int) or T < Adding1997.min_T:
        raise ValueError(f"train_adding_1997: T must be an int ≥ {Adding1997.min_T}, got {T!r}")
    if max_sequences is not None and max_sequences < 1:
        raise ValueError(f"train_adding_1997: max_sequences must be ≥ 1, got {max_sequences}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"train_adding_1997: max_seconds must be > 0, got {max_seconds}")
    if window < 1:
        raise ValueError(f"train_adding_1997: window must be ≥ 1, got {window}")
    task = Adding1997(T)
    gen = torch.Generator().manual_seed(seed)
    net = Tiny1997.init(shape, gen=torch.Generator().manual_seed(seed + 7))
    chunk = chunk or max(32, 100_000 // T)
    recent: deque[float] = deque(maxlen=window)       # squared errors, most recent last
    seen, streak, steps, stopped, reason = 0, 0, 0, False, ""
    first_below = None          # sequences when the window's MSE first fell below mse_stop
    pending = None              # sampled sequences a call left untrained (x, lengths, y)
    train_time = 0.0
    start = last_log = time.perf_counter()
    while True:
        if max_sequences is not None and seen >= max_sequences:
            reason = "sequence cap"
            break
        if max_seconds is not None and time.perf_counter() - start >= max_seconds:
            reason = "time cap"
            break
        n = chunk if max_sequences is None else min(chunk, max_sequences - seen)
        if pending is not None and len(pending[2]) > 0:
            x, lengths, y = (t[:n] for t in pending)   # what the last call left untrained
            pending = tuple(t[n:] for t in pending)
        else:
            x, lengths, y = _as_double(task.sample(n, gen))
        t0 = time.perf_counter()
        out, streak = net.train(x, y, lengths, lr=lr, streak=streak, stop_streak=window,
                                tol=tol)
        train_time += time.perf_counter() - t0
        k = len(out)
        if k < len(y):      # it stopped on the streak: keep the rest, the stream stays one
            rest = (x[k:], lengths[k:], y[k:])
            pending = rest if pending is None or len(pending[2]) == 0 else tuple(
                _cat_rows(a, b) for a, b in zip(rest, pending))
        steps += int(lengths[:k].sum())
        seen += k
        recent.extend(((out - y[:k]) ** 2).tolist())
        if not torch.isfinite(net.weights).all():
            reason = "diverged (non-finite weights)"
            break
        window_mse = sum(recent) / len(recent)
        if first_below is None and len(recent) == window and window_mse < mse_stop:
            first_below = seen
        if streak >= window and window_mse < mse_stop:
            stopped, reason = True, "stop criterion"
            break
        now = time.perf_counter()
        if log is not None and now - last_log >= log_every:
            last_log = now
            log(f"T={T} seed={seed}: {seen:,} sequences, {now - start:.0f} s, recent MSE "
                f"{sum(recent) / len(recent):.4f}, streak {streak}")
    seconds = time.perf_counter() - start
    result = {
        "T": T, "seed": seed, "sequences": seen, "stopped": stopped, "reason": reason,
        "seconds": round(seconds, 2), "train_steps": steps,
        "ns_per_step": round(1e9 * train_time / max(steps, 1), 1),
        "recent_mse": sum(recent) / max(len(recent), 1), "streak": streak,
        "first_window_mse_below_stop": first_below,
        "lr": lr, "shape": {"input_size": shape.input_size, "blocks": shape.blocks,
                            "block_size": shape.block_size,
                            "gate_feedback": shape.gate_feedback,
                            "n_weights": shape.n_weights},
        "window": window, "tol": tol, "mse_stop": mse_stop,
    }
    if math.isfinite(float(net.weights.abs().max())):
        result.update(score_adding(net, T, seed, n_test))
    result["paper"] = PAPER_TABLE7.get(T)
    if log is not None:
        log(f"T={T} seed={seed}: {reason} after {seen:,} sequences, {seconds:.0f} s; "
            f"test wrong {result.get('test_wrong')} of {n_test}")
    return result


def markdown_rows(runs: list[dict]) -> str:
    """Our runs beside the paper's Table 7 row for their T, as a Markdown table."""
    lines = ["| T | seed | wrong of 2,560 (paper) | sequences until stop (paper) | "
             "window MSE < 0.01 at | stopped by | time |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        if "skipped" in r:
            lines.append(f"| {r['T']} | {r['seed']} | — | — | — | {r['skipped']} | — |")
            continue
        paper = r.get("paper") or {}
        wrong = r.get("test_wrong", "—")
        first = r.get("first_window_mse_below_stop")
        paper_seq = f"{paper['sequences']:,}" if paper else "—"
        lines.append(
            f"| {r['T']} | {r['seed']} | {wrong} ({paper.get('wrong', '—')}) | "
            f"{r['sequences']:,} ({paper_seq}) | "
            f"{f'{first:,}' if first else 'never'} | {r['reason']} | {r['seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def run_protocol_1997(T: int, seeds: int, out, *, max_sequences: int | None = None,
                      max_seconds: float | None = 3600.0,
                      log: Callable[[str], None] | None = None) -> list[dict]:
    """``lstmkit experiment adding --protocol 1997``: ``seeds`` runs (seeds 0, 1, …) of
    :func:`train_adding_1997`; writes ``results.json`` and ``results.md`` into ``out``."""
    import json
    from pathlib import Path
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"run_protocol_1997: seeds must be ≥ 1, got {seeds!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in range(seeds):
        runs.append(train_adding_1997(T, seed, max_sequences=max_sequences,
                                      max_seconds=max_seconds, log=log))
        (out / "results.json").write_text(json.dumps({"protocol": "1997", "runs": runs},
                                                     indent=1))
    (out / "results.md").write_text(
        f"# Adding problem, T = {T}, the 1997 protocol (Hochreiter & Schmidhuber 1997, "
        "Table 7)\n\n" + markdown_rows(runs))
    return runs
