"""The PyTorch peer of the decoding benchmark: an eager beam search of spec §14.2 over the reference model
(tests/reference/ofa_torch.py) with an incremental (KV-cached) decoder step.

The reference model only has a teacher-forced decoder, which a real generator would not re-run over the
whole prefix at every step; `CachedDecoder` computes the same function one position at a time from the
reference's own modules (its LayerNorms, projections, relative tables, position tables), keeping each
layer's self-attention keys/values, as fairseq's incremental decoding does. Cross-attention keys/values are
projected once per sentence and shared by its K hypotheses (not tiled, not reordered).

`beam_search` is plain PyTorch in the style of fairseq's generator: (B*K, V) log-probs per step, top-2K per
sentence, finalisation bookkeeping in Python. Constraints (box / polygon) mask the logits before the
log-softmax, as the original's `constraint_range` does (spec §14.3): the normalisation over the allowed
set that the JAX workflow uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BOS, PAD, EOS, UNK = 0, 1, 2, 3
NUM_BINS = 1000


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., T, D) -> (..., H, T, hd)."""
    *lead, t, d = x.shape
    return x.view(*lead, t, heads, d // heads).transpose(-2, -3)


class CachedDecoder:
    """One decoder position at a time for R = B*K hypotheses (row b*K + k belongs to sentence b)."""

    def __init__(self, reference, enc: dict[str, torch.Tensor], beam: int, max_positions: int):
        dec = reference.decoder
        self.dec, self.cfg, self.beam = dec, reference.cfg, beam
        self.heads = self.cfg.heads
        self.scaling = dec.pos_scaling
        memory = enc["encoder_out"]  # (B, S, D)
        batch, _, d = memory.shape
        self.batch, self.rows = batch, batch * beam
        pos = dec.pos_ln(dec.embed_positions.weight[:max_positions])  # (T, D)
        self.pos = pos
        self.self_pos_k = _heads(dec.self_pos_k_linear(pos), self.heads)  # (H, T, hd)
        self.cross_pos_k = _heads(
            dec.cross_pos_k_linear(enc["position_embeddings"]), self.heads
        )  # (B,H,S,hd)
        self.pad = enc["padding_mask"][:, None, None, None, :]  # (B, 1, 1, 1, S)
        self.cross_kv = []
        for layer in dec.layers:
            attn = layer.encoder_attn
            k = _heads(attn.k_proj(memory), self.heads)[:, None]  # (B, 1, H, S, hd)
            v = _heads(attn.v_proj(memory), self.heads)[:, None]
            self.cross_kv.append((k, v))
        hd = d // self.heads
        self.keys = [memory.new_zeros(self.rows, self.heads, max_positions, hd) for _ in dec.layers]
        self.values = [memory.new_zeros(self.rows, self.heads, max_positions, hd) for _ in dec.layers]

    def reorder(self, parent: torch.Tensor, t: int) -> None:
        """Hypothesis rows follow their parents (only the written positions 0..t are copied)."""
        for cache in (self.keys, self.values):
            for i, tensor in enumerate(cache):
                cache[i][:, :, : t + 1] = tensor[parent, :, : t + 1]

    def step(self, tokens: torch.Tensor, t: int, output_ids: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (R,) at position t -> logits (R, V) (or (R, C) at `output_ids`)."""
        dec, h, s, k_beam = self.dec, self.heads, self.scaling, self.beam
        x = dec.embed_tokens(tokens)[:, None]  # (R, 1, D)
        if not self.cfg.disable_entangle:
            x = x + dec.embed_positions.weight[t]
        x = dec.layernorm_embedding(x)
        pos_t = self.pos[t : t + 1]
        q_self = _heads(dec.self_pos_q_linear(pos_t) * s, h)  # (H, 1, hd)
        self_abs = q_self @ self.self_pos_k[:, : t + 1].transpose(-1, -2)  # (H, 1, t+1)
        q_cross = _heads(dec.cross_pos_q_linear(pos_t) * s, h)  # (H, 1, hd)
        cross_bias = (q_cross[None] @ self.cross_pos_k.transpose(-1, -2))[:, None]  # (B, 1, H, 1, S)
        buckets = dec.token_rp_bucket[t, : t + 1]
        rows, d = x.shape[0], x.shape[-1]
        for i, layer in enumerate(dec.layers):
            rel = dec.token_rel_pos_table_list[i](buckets).t()[:, None, :]  # (H, 1, t+1)
            y = layer.self_attn_layer_norm(x)
            attn = layer.self_attn
            q = _heads(attn.q_proj(y) * attn.scaling, h)  # (R, H, 1, hd)
            self.keys[i][:, :, t] = _heads(attn.k_proj(y), h)[:, :, 0]
            self.values[i][:, :, t] = _heads(attn.v_proj(y), h)[:, :, 0]
            logits = q @ self.keys[i][:, :, : t + 1].transpose(-1, -2) + self_abs + rel
            probs = torch.softmax(logits.float(), dim=-1).type_as(q)
            o = (probs @ self.values[i][:, :, : t + 1]) * attn.c_attn[None, :, None, None]
            y = attn.out_proj(o.transpose(1, 2).reshape(rows, 1, d))
            x = x + layer.self_attn_ln(y)

            y = layer.encoder_attn_layer_norm(x)
            attn = layer.encoder_attn
            q = _heads(attn.q_proj(y) * attn.scaling, h).view(self.batch, k_beam, h, 1, -1)
            ck, cv = self.cross_kv[i]
            logits = (q @ ck.transpose(-1, -2) + cross_bias).masked_fill(self.pad, float("-inf"))
            probs = torch.softmax(logits.float(), dim=-1).type_as(q)
            o = ((probs @ cv) * attn.c_attn[None, None, :, None, None]).view(rows, h, 1, -1)
            y = attn.out_proj(o.transpose(1, 2).reshape(rows, 1, d))
            x = x + layer.cross_attn_ln(y)

            y = layer.ffn_layernorm(F.gelu(layer.fc1(layer.final_layer_norm(x)).float()).type_as(x))
            x = x + layer.fc2(y)
        x = dec.layer_norm(x)[:, 0]
        weight = dec.output_projection.weight
        return x @ (weight if output_ids is None else weight[output_ids]).t()


class BinConstraint:
    """Box (`corners`=4: x1 >= x0, y1 >= y0) or polygon (`corners`=2) bins then EOS, as masks over V."""

    def __init__(self, vocab_size: int, steps: int, box: bool):
        self.vocab_size, self.steps, self.box = vocab_size, steps, box
        self.first_bin = vocab_size - NUM_BINS

    def init(self, rows: int) -> dict[str, torch.Tensor]:
        zeros = torch.zeros(rows, dtype=torch.long)
        return {"position": zeros, "x0": zeros.clone(), "y0": zeros.clone()}

    def allowed(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = torch.arange(self.vocab_size)[None, :]
        bins = ids - self.first_bin
        lowest = torch.zeros_like(state["position"])
        if self.box:
            corner = state["position"] % 4
            lowest = torch.where(corner == 2, state["x0"], torch.where(corner == 3, state["y0"], lowest))
        writing = (state["position"] < self.steps)[:, None]
        return torch.where(writing, bins >= lowest[:, None], ids == EOS)

    def advance(self, state: dict[str, torch.Tensor], tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        k = tokens - self.first_bin
        corner = state["position"] % 4
        return {
            "position": torch.clamp(state["position"] + 1, max=self.steps + 1),
            "x0": torch.where(corner == 0, k, state["x0"]) if self.box else state["x0"],
            "y0": torch.where(corner == 1, k, state["y0"]) if self.box else state["y0"],
        }

    @staticmethod
    def reorder(state: dict[str, torch.Tensor], parent: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: value[parent] for name, value in state.items()}


def _ngram_bans(tokens: torch.Tensor, t: int, n: int, vocab: int) -> torch.Tensor | None:
    """(R, V) bool of tokens that would repeat an n-gram of positions 0..t (BOS included), or None."""
    if n == 0 or t + 1 < n:  # no complete n-gram written yet
        return None
    history = tokens[:, : t + 1]
    windows = history.unfold(1, n, 1)  # (R, t + 2 - n, n)
    key = history[:, t - n + 2 : t + 1]  # (R, n - 1)
    match = (windows[:, :, : n - 1] == key[:, None, :]).all(-1)  # (R, W)
    banned = torch.zeros(tokens.shape[0], vocab + 1, dtype=torch.bool)
    banned.scatter_(1, torch.where(match, windows[:, :, n - 1], vocab), True)
    return banned[:, :vocab]


@torch.no_grad()
def beam_search(
    reference,
    enc: dict[str, torch.Tensor],
    *,
    beam_size: int,
    max_len: int,
    min_len: int = 1,
    no_repeat_ngram_size: int = 0,
    length_penalty: float = 1.0,
    constraint: BinConstraint | None = None,
) -> tuple[list[list[tuple[float, list[int]]]], int]:
    """Spec §14.2 for the B sentences of `enc`: per sentence the finalised (score, tokens incl. EOS), best
    first; and the number of decoder steps run."""
    k = beam_size
    batch = enc["encoder_out"].shape[0]
    rows = batch * k
    vocab = reference.cfg.vocab_size
    decoder = CachedDecoder(reference, enc, k, max_len + 1)
    tokens = torch.full((rows, max_len + 2), PAD, dtype=torch.long)
    tokens[:, 0] = BOS
    cumulative = torch.zeros(rows, max_len + 1)
    finalised: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    state = constraint.init(rows) if constraint is not None else None
    steps = 0
    for t in range(max_len + 1):
        steps += 1
        logits = decoder.step(tokens[:, t], t).float()
        if constraint is not None:
            logits = logits.masked_fill(~constraint.allowed(state), float("-inf"))
        lp = torch.log_softmax(logits, dim=-1)
        if t < min_len:
            lp[:, EOS] = float("-inf")
        lp = lp.masked_fill(torch.isnan(lp), float("-inf"))
        lp[:, PAD] = float("-inf")
        if t >= max_len:
            eos = lp[:, EOS].clone()
            lp.fill_(float("-inf"))
            lp[:, EOS] = eos
        banned = _ngram_bans(tokens, t, no_repeat_ngram_size, vocab)
        if banned is not None:
            lp = lp.masked_fill(banned, float("-inf"))
        previous = cumulative[:, t - 1] if t > 0 else torch.zeros(rows)
        scores = (lp + previous[:, None]).view(batch, k, vocab)
        if t == 0:
            scores[:, 1:] = float("-inf")
        cand_scores, flat = torch.topk(scores.view(batch, k * vocab), 2 * k, dim=1)
        cand_beams, cand_tokens = flat // vocab, flat % vocab
        is_final = (cand_tokens == EOS) & torch.isfinite(cand_scores)
        final_list = is_final[:, :k].tolist()
        for b in range(batch):
            if done[b]:
                continue
            for j in range(k):
                if final_list[b][j] and len(finalised[b]) < k:
                    row = b * k + int(cand_beams[b, j])
                    answer = [*tokens[row, 1 : t + 1].tolist(), EOS]
                    score = float(cand_scores[b, j]) / float((t + 1) ** length_penalty)
                    finalised[b].append((score, answer))
        order = torch.argsort(is_final.long() * 2 * k + torch.arange(2 * k), dim=1)[:, :k]
        parent = (cand_beams.gather(1, order) + torch.arange(batch)[:, None] * k).view(-1)
        chosen = cand_tokens.gather(1, order).view(-1)
        chosen_scores = cand_scores.gather(1, order).view(-1)
        tokens = tokens[parent]
        tokens[:, t + 1] = chosen
        cumulative = cumulative[parent]
        cumulative[:, t] = chosen_scores
        decoder.reorder(parent, t)
        if constraint is not None:
            state = constraint.advance(constraint.reorder(state, parent), chosen)
        alive = torch.isfinite(chosen_scores.view(batch, k)).any(dim=1).tolist()
        for b in range(batch):
            done[b] = done[b] or len(finalised[b]) >= k or t >= max_len or not alive[b]
        if all(done):
            break
    return [sorted(f, key=lambda h: -h[0]) for f in finalised], steps
