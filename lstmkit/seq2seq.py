r"""An attentional encoder–decoder (Bahdanau et al. 2015; Luong, Pham & Manning 2015).

Source tokens x_1 … x_S, target tokens y_0 = bos, y_1 … y_T = eos (batch first)::

    encoder:  (k_1 … k_S) = BiRNN(E_src x)            k_s = [→h_s; ←h_s]      (B, S, 2H)
    bridge:   s_0^l = tanh(W_b [→h_S^l; ←h_1^l] + b_b)  per layer l (and c_0^l for an LSTM)
    decoder:  s_t = Cell(s_{t-1}, [E_tgt y_{t-1}; h̃_{t-1}])     h̃_0 = 0 (input feeding)
              c_t, α_t = Attention(s_t^top, k, mask)
              h̃_t = tanh(W_c [c_t; s_t^top])
              p(y_t | y_<t, x) = softmax(W_o h̃_t + b_o)

``pad`` and ``bos`` are never predicted: their logits are −∞, so the softmax runs over the
other symbols, in training as in decoding. ``attention="luong-dot"`` scores s_tᵀ k'_s on the
keys projected to H (k'_s = W_k k_s, no bias), since a dot product needs equal sizes.

Scores: a hypothesis y_1 … y_n (ending in eos, or cut at ``max_len`` without it) has
score = Σ_t log p(y_t | y_<t, x) and normalised score = score / n^α with n the number of
generated tokens (eos included) and α = ``length_penalty``; α = 0 ranks by the sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .attention import BahdanauAttention, LuongAttention
from .nn import GRU, LSTM, GRUCell, LSTMCell

ATTENTIONS = ("bahdanau", "luong-general", "luong-dot")
CELLS = ("lstm", "gru")


class Seq2SeqInputError(ValueError):
    """A source, target, length or decoding argument that :class:`Seq2Seq` cannot use."""


class Seq2Seq(nn.Module):
    """Attentional encoder–decoder; see the module docstring for the equations.

    ``src`` (B, S) and ``tgt`` (B, T) are token ids, padded with anything past
    ``src_lengths``/``tgt_lengths`` (B,); ``tgt`` holds bos … eos. ``encoder_kwargs`` go to
    :class:`lstmkit.LSTM`/:class:`lstmkit.GRU` (variants, regularisers, backend).
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, emb: int = 64, hidden: int = 128,
                 layers: int = 1, attention: str = "bahdanau", cell: str = "lstm",
                 dropout: float = 0.0, input_feeding: bool = True, bos: int = 1, eos: int = 2,
                 pad: int = 0, **encoder_kwargs: object) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"Seq2Seq: attention must be one of {ATTENTIONS}, got {attention!r}")
        if cell not in CELLS:
            raise ValueError(f"Seq2Seq: cell must be one of {CELLS}, got {cell!r}")
        for name, tok in (("bos", bos), ("eos", eos), ("pad", pad)):
            if not 0 <= tok < tgt_vocab:
                raise ValueError(f"Seq2Seq: {name}={tok} is outside the target vocab "
                                 f"of {tgt_vocab}")
        if eos in (pad, bos):
            raise ValueError("Seq2Seq: eos must differ from pad and bos")
        self.bos, self.eos, self.pad = bos, eos, pad
        self.hidden, self.layers, self.cell_kind = hidden, layers, cell
        self.input_feeding = bool(input_feeding)
        H = hidden
        self.src_emb = nn.Embedding(src_vocab, emb, padding_idx=pad)
        self.tgt_emb = nn.Embedding(tgt_vocab, emb, padding_idx=pad)
        rnn = LSTM if cell == "lstm" else GRU
        self.encoder = rnn(emb, H, num_layers=layers, batch_first=True, bidirectional=True,
                           dropout=dropout if layers > 1 else 0.0, **encoder_kwargs)
        n_states = 2 if cell == "lstm" else 1
        self.bridges = nn.ModuleList(nn.Linear(2 * H, H) for _ in range(n_states))
        step = LSTMCell if cell == "lstm" else GRUCell
        first = emb + (H if self.input_feeding else 0)
        self.cells = nn.ModuleList(step(first if i == 0 else H, H) for i in range(layers))
        self.key_proj = nn.Linear(2 * H, H, bias=False) if attention == "luong-dot" else None
        K = H if self.key_proj is not None else 2 * H
        self.attention = (BahdanauAttention(H, K) if attention == "bahdanau"
                          else LuongAttention(H, K, kind=attention.split("-")[1]))
        self.combine = nn.Linear(K + H, H, bias=False)                  # W_c
        self.out = nn.Linear(H, tgt_vocab)                              # W_o, b_o
        self.drop = nn.Dropout(dropout)
        banned = torch.zeros(tgt_vocab, dtype=torch.bool)
        banned[[pad, bos]] = True
        self.register_buffer("banned", banned, persistent=False)

    # -- checks ------------------------------------------------------------------------------
    @staticmethod
    def _check_seq(name: str, seq: Tensor, lengths: Tensor, least: int) -> Tensor:
        if seq.dim() != 2:
            raise Seq2SeqInputError(f"Seq2Seq: {name} must be (batch, length), "
                                    f"got shape {tuple(seq.shape)}")
        if seq.shape[0] == 0 or seq.shape[1] == 0:
            raise Seq2SeqInputError(f"Seq2Seq: {name} is empty, shape {tuple(seq.shape)}")
        lengths = torch.as_tensor(lengths).to("cpu", torch.long)
        if lengths.shape != (seq.shape[0],):
            raise Seq2SeqInputError(f"Seq2Seq: {name} lengths must be ({seq.shape[0]},), "
                                    f"got shape {tuple(lengths.shape)}")
        if int(lengths.min()) < least or int(lengths.max()) > seq.shape[1]:
            raise Seq2SeqInputError(f"Seq2Seq: {name} lengths must lie in [{least}, "
                                    f"{seq.shape[1]}], got {lengths.tolist()}")
        return lengths

    @staticmethod
    def _check_decode(max_len: int, beam: int = 1) -> None:
        if not isinstance(max_len, int) or max_len < 1:
            raise Seq2SeqInputError(f"Seq2Seq: max_len must be an int ≥ 1, got {max_len!r}")
        if not isinstance(beam, int) or beam < 1:
            raise Seq2SeqInputError(f"Seq2Seq: beam must be an int ≥ 1, got {beam!r}")

    # -- encoder -----------------------------------------------------------------------------
    def encode(self, src: Tensor, src_lengths: Tensor):
        """Returns (keys (B, S, K), projected keys, mask (B, S), initial state, h̃_0 (B, H))."""
        lengths = self._check_seq("src", src, src_lengths, 1)
        B, S = src.shape
        x = self.drop(self.src_emb(src))                                 # (B, S, E)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, final = self.encoder(packed)
        keys, _ = pad_packed_sequence(out, batch_first=True, total_length=S)   # (B, S, 2H)
        finals = final if isinstance(final, tuple) else (final,)          # each (2L, B, H)
        state = tuple(torch.tanh(bridge(f.view(self.layers, 2, B, self.hidden)
                                        .permute(0, 2, 1, 3).reshape(self.layers, B, -1)))
                      for bridge, f in zip(self.bridges, finals))         # each (L, B, H)
        if self.key_proj is not None:
            keys = self.key_proj(keys)                                   # (B, S, H)
        mask = torch.arange(S, device=src.device)[None, :] < lengths.to(src.device)[:, None]
        feed = keys.new_zeros(B, self.hidden)
        return keys, self.attention.precompute(keys), mask, state, feed

    # -- one decoder step --------------------------------------------------------------------
    def step(self, y_prev: Tensor, state: tuple[Tensor, ...], feed: Tensor, memory):
        """One token: ``y_prev`` (B,), state (each (L, B, H)), h̃_{t-1} (B, H), memory =
        (keys, projected, mask). Returns (log p (B, V), state, h̃_t, α_t (B, S))."""
        keys, projected, mask = memory
        x = self.tgt_emb(y_prev)                                         # (B, E)
        if self.input_feeding:
            x = torch.cat([x, feed], dim=1)                              # (B, E + H)
        x = self.drop(x)
        new: list[tuple[Tensor, ...]] = []
        for layer, cell in enumerate(self.cells):
            if self.cell_kind == "lstm":
                s = cell(x, (state[0][layer], state[1][layer]))
            else:
                s = (cell(x, state[0][layer]),)
            new.append(s)
            x = self.drop(s[0]) if layer + 1 < self.layers else s[0]
        state = tuple(torch.stack(parts) for parts in zip(*new))
        top = new[-1][0]                                                 # (B, H)
        context, alpha = self.attention(top, keys, mask, projected)      # (B, K), (B, S)
        feed = torch.tanh(self.combine(torch.cat([context, top], dim=1)))  # h̃_t (B, H)
        logits = self.out(self.drop(feed)).masked_fill(self.banned, float("-inf"))
        return F.log_softmax(logits, dim=1), state, feed, alpha

    # -- training ----------------------------------------------------------------------------
    def loss(self, src: Tensor, src_lengths: Tensor, tgt: Tensor, tgt_lengths: Tensor,
             reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
        """Teacher-forced cross-entropy of tgt[:, 1:] given tgt[:, :-1], over real tokens
        only (positions < tgt_lengths − 1). ``"mean"``: mean over all tokens of the batch;
        ``"sum"``: their sum; ``"none"``: each sentence's token mean (B,).

        ``label_smoothing`` ε (Szegedy et al. 2016): each token's loss is
        −(1 − ε) log p(y_t) − ε · mean_v log p(v), the mean over the symbols the model can
        emit (not pad or bos), as ``F.cross_entropy(label_smoothing=ε)`` over those symbols.
        """
        tgt_lengths = self._check_seq("tgt", tgt, tgt_lengths, 2)
        if tgt.shape[0] != src.shape[0]:
            raise Seq2SeqInputError(f"Seq2Seq: src has {src.shape[0]} sentences, "
                                    f"tgt {tgt.shape[0]}")
        if not 0.0 <= label_smoothing < 1.0:
            raise Seq2SeqInputError(f"Seq2Seq: label_smoothing must be in [0, 1), "
                                    f"got {label_smoothing}")
        keys, projected, mask, state, feed = self.encode(src, src_lengths)
        memory = (keys, projected, mask)
        steps = []
        allowed = int((~self.banned).sum()) if label_smoothing else 0
        for t in range(tgt.shape[1] - 1):
            logp, state, feed, _ = self.step(tgt[:, t], state, feed, memory)
            target = logp.gather(1, tgt[:, t + 1: t + 2]).squeeze(1)      # (B,)
            if label_smoothing:
                uniform = logp.masked_fill(self.banned, 0.0).sum(1) / allowed
                target = (1.0 - label_smoothing) * target + label_smoothing * uniform
            steps.append(target)
        logp = torch.stack(steps, dim=1)                                 # (B, T-1)
        n = (tgt_lengths - 1).to(tgt.device)
        real = torch.arange(logp.shape[1], device=tgt.device)[None, :] < n[:, None]
        nll = -logp.masked_fill(~real, 0.0)
        if reduction == "none":
            return nll.sum(1) / n
        if reduction == "sum":
            return nll.sum()
        if reduction == "mean":
            return nll.sum() / n.sum()
        raise ValueError(f"Seq2Seq.loss: reduction must be mean, sum or none, got {reduction!r}")

    # -- decoding ----------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, src: Tensor, src_lengths: Tensor, max_len: int = 50,
               return_attention: bool = False):
        """Argmax decoding of the batch. Returns token lists (no bos/eos) and, with
        ``return_attention``, per sentence α (T_out, S): one row per decoding step (the eos
        step included), S the padded source length, zeros past the sentence's own length."""
        self._check_decode(max_len)
        keys, projected, mask, state, feed = self.encode(src, src_lengths)
        B = src.shape[0]
        y = torch.full((B,), self.bos, dtype=torch.long, device=src.device)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)
        tokens, alphas = [], []
        for _ in range(max_len):
            logp, state, feed, alpha = self.step(y, state, feed, (keys, projected, mask))
            y = logp.argmax(1)
            tokens.append(y)
            alphas.append(alpha)
            done = done | (y == self.eos)
            if bool(done.all()):
                break
        tokens_t, alphas_t = torch.stack(tokens, 1), torch.stack(alphas, 1)  # (B, T), (B, T, S)
        out, att = [], []
        for b in range(B):
            row = tokens_t[b].tolist()
            n = row.index(self.eos) + 1 if self.eos in row else len(row)   # steps taken
            out.append([t for t in row[:n] if t != self.eos])
            att.append(alphas_t[b, :n])
        return (out, att) if return_attention else out

    @torch.no_grad()
    def beam_search(self, src: Tensor, src_lengths: Tensor, beam: int = 5, max_len: int = 50,
                    length_penalty: float = 0.0, return_attention: bool = False):
        """Beam search, vectorised over beam × batch. Returns per sentence the tokens (no
        bos/eos) of the best finished hypothesis by score / n^length_penalty (module
        docstring), and with ``return_attention`` its α (n, S) as in :meth:`greedy`.

        Each step scores all K·V extensions of the K live hypotheses and takes the top 2K:
        an eos ranked in the top K ends a hypothesis, the best K others stay live (each
        hypothesis has one eos extension, so there are always K). A sentence stops when K
        hypotheses have ended; at ``max_len`` the live ones end without eos.
        """
        self._check_decode(max_len, beam)
        keys, projected, mask, state, feed = self.encode(src, src_lengths)
        B, S, K, dev = src.shape[0], src.shape[1], beam, src.device
        rep = lambda t, d=0: t.repeat_interleave(K, dim=d)               # noqa: E731
        memory = (rep(keys), rep(projected), rep(mask))
        state, feed = tuple(rep(s, 1) for s in state), rep(feed)         # (L, B·K, H), (B·K, H)
        score = torch.full((B, K), float("-inf"), dtype=keys.dtype, device=dev)
        score[:, 0] = 0.0                                                # one live start
        hist = torch.full((B, K, 0), self.bos, dtype=torch.long, device=dev)
        ahist = keys.new_zeros(B, K, 0, S)
        y = torch.full((B * K,), self.bos, dtype=torch.long, device=dev)
        finished: list[list[tuple[float, list[int], Tensor]]] = [[] for _ in range(B)]
        for t in range(max_len):
            logp, state, feed, alpha = self.step(y, state, feed, memory)
            V = logp.shape[1]
            cand = (score[:, :, None] + logp.view(B, K, V)).view(B, K * V)
            top, idx = cand.topk(min(2 * K, K * V), dim=1)               # (B, 2K)
            src_beam, tok = idx // V, idx % V
            ended = tok == self.eos
            alpha = alpha.view(B, K, S)
            for b in range(B):                                           # record endings
                if len(finished[b]) >= K:
                    continue
                for r in range(min(K, top.shape[1])):
                    if ended[b, r] and top[b, r] > float("-inf"):
                        k = int(src_beam[b, r])
                        att = torch.cat([ahist[b, k], alpha[b, k, None]])
                        finished[b].append(_ended(top[b, r], hist[b, k], att, length_penalty))
            live = top.masked_fill(ended, float("-inf")).topk(K, dim=1)   # best K non-eos
            pick = idx.gather(1, live.indices)                           # (B, K) into K·V
            beam_idx, tok = pick // V, pick % V
            score = live.values
            hist = torch.cat([hist.gather(1, beam_idx[:, :, None].expand(-1, -1, t)),
                              tok[:, :, None]], dim=2)
            ahist = torch.cat([ahist.gather(1, beam_idx[:, :, None, None].expand(-1, -1, t, S)),
                               alpha.gather(1, beam_idx[:, :, None].expand(-1, -1, S))[:, :, None]],
                              dim=2)
            flat = (beam_idx + torch.arange(B, device=dev)[:, None] * K).view(-1)
            state, feed, y = tuple(s[:, flat] for s in state), feed[flat], tok.view(-1)
            if all(len(f) >= K for f in finished):
                break
        else:                                                             # cut at max_len
            for b in range(B):
                if len(finished[b]) < K:
                    for k in range(K):
                        if score[b, k] > float("-inf"):
                            finished[b].append(_ended(score[b, k], hist[b, k], ahist[b, k],
                                                      length_penalty))
        best = [max(f, key=lambda h: h[0]) for f in finished]
        out = [h[1] for h in best]
        return (out, [h[2] for h in best]) if return_attention else out


def _ended(score: Tensor, tokens: Tensor, att: Tensor, length_penalty: float):
    """(score / n^α, tokens without eos, attention (n, S)) of a finished hypothesis of n
    generated tokens (its eos included; ``tokens`` holds the ones before it)."""
    n = att.shape[0]
    return float(score) / n ** length_penalty, tokens.tolist(), att
