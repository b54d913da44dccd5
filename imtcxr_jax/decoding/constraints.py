"""Constraint automata: per-step allowed-token masks that make structured answers well-formed by construction.

DESIGN.md decision 7. The original generator decodes every task unconstrained (spec §14.3, §16 item 25), so a
box may come out as 3 bins, a polygon as words. Here each answer format is a small automaton over token ids:

* `BoxConstraint(vocab_size=V, num_boxes=n)`: exactly 4n location bins ``x0 y0 x1 y1 ...`` then EOS, with
  x1 >= x0 and y1 >= y0 in every box (bins are monotone in the coordinate, spec §10);
* `PolygonConstraint(vocab_size=V, num_points=N)`: exactly 2N bins then EOS;
* `PhraseConstraint(token_sequences, vocab_size=V)`: exactly one of the given answers then EOS (a trie),
  for yes/no, location and severity answers; with ``separator`` (e.g. the id of ",") a list of distinct
  answers, as the disease-list answer ``" atelectasis, pleural effusion"``, where ``solo`` answers such as
  ``" no finding"`` may only stand alone.

The location bins are the last `num_bins` ids of the vocabulary (spec §2, §10): bin k is id V - num_bins + k.

Interface (used inside the jitted beam search, so everything is traceable and shapes are static):

* ``init(batch_size) -> state``: a pytree of arrays with leading axis `batch_size` (one row per hypothesis);
* ``allowed(state) -> (batch, V) bool``: the tokens each hypothesis may emit next;
* ``advance(state, tokens (batch,)) -> state``: the state after emitting `tokens`;
* ``min_steps`` / ``max_steps``: the fewest / most tokens an accepted answer has before its EOS (max_steps
  None = unbounded), so that the search can reject a max_len or min_len no answer can satisfy;
* ``candidate_ids``: None, or the static (numpy) ascending ids of every token the automaton can ever allow
  (the bin automata: EOS and the bins), and ``allowed_candidates(state) -> (batch, C) bool``: `allowed`
  restricted to those ids, so that a search can project the decoder's output onto those C rows of the
  embedding instead of the whole vocabulary (``beam_search(..., project_allowed=True)``).

Every state allows at least one token. Only a hypothesis whose score is already -inf can pick a token its
state does not allow, and such a hypothesis is never finalised: the phrase trie sends it to its final state
(EOS only), the bin automata just keep counting. The constraint objects are pytrees: their tables and counts
are leaves (traced by jit: constraints of one kind and table shape share a compilation), the vocabulary size
and the mode are static.

How the search applies the mask, and how constrained scores are normalised (over the whole vocabulary or
over the allowed tokens): see `beam_search.py`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

BOS_ID, PAD_ID, EOS_ID = 0, 1, 2
NUM_BINS = 1000  # spec §2: <bin_0> ... <bin_999> are the last 1000 ids


class Constraint(abc.ABC):
    """A token automaton; see the module docstring for the interface."""

    vocab_size: int

    @property
    @abc.abstractmethod
    def min_steps(self) -> int:
        """Fewest tokens of an accepted answer before its EOS."""

    @property
    @abc.abstractmethod
    def max_steps(self) -> int | None:
        """Most tokens of an accepted answer before its EOS (None: unbounded)."""

    @abc.abstractmethod
    def init(self, batch_size: int) -> Any: ...

    @abc.abstractmethod
    def allowed(self, state: Any) -> jax.Array: ...

    @property
    def candidate_ids(self) -> np.ndarray | None:
        """Ascending ids of every token any state may allow (static), or None (not restricted/known)."""
        return None

    def allowed_candidates(self, state: Any) -> jax.Array:
        """(B, C) bool: `allowed(state)` at the columns `candidate_ids`."""
        if self.candidate_ids is None:
            raise ValueError(f"{type(self).__name__} has no candidate_ids")
        return self.allowed(state)[:, self.candidate_ids]

    @abc.abstractmethod
    def advance(self, state: Any, tokens: jax.Array) -> Any: ...


def _check_vocab(vocab_size: int, num_bins: int) -> tuple[int, int]:
    if not isinstance(vocab_size, int | np.integer) or not isinstance(num_bins, int | np.integer):
        raise ValueError(f"vocab_size, num_bins: got {vocab_size!r}, {num_bins!r}, expected integers")
    if num_bins < 1 or vocab_size < num_bins + 4:
        raise ValueError(
            f"vocab_size {vocab_size} / num_bins {num_bins}: expected num_bins >= 1 and room for the "
            "4 specials before the bins"
        )
    return int(vocab_size), int(num_bins)


def _positive(name: str, value: Any) -> int:
    if not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name}: got {value!r}, expected an integer >= 1")
    return int(value)


def _ids_and_bins(vocab_size: int, num_bins: int) -> tuple[jax.Array, jax.Array]:
    """(1, V) int32 ids and their bin index k = id - (V - num_bins) (negative for ids that are not bins)."""
    ids = jnp.arange(vocab_size, dtype=jnp.int32)[None, :]
    return ids, ids - (vocab_size - num_bins)


# ---------------------------------------------------------------------------------------------------------
# Bins: boxes and polygons
# ---------------------------------------------------------------------------------------------------------


@struct.dataclass
class BinState:
    """How many bins a hypothesis has emitted, and the first corner of the box being written."""

    position: jax.Array  # (B,) int32: bins emitted so far (num_bins_total + 1 after the EOS)
    x0: jax.Array  # (B,) int32: bin index of the current box's x0 (boxes only)
    y0: jax.Array  # (B,) int32: bin index of the current box's y0 (boxes only)


def _bin_init(batch_size: int) -> BinState:
    zeros = jnp.zeros((batch_size,), jnp.int32)
    return BinState(position=zeros, x0=zeros, y0=zeros)


def _bin_candidates(vocab_size: int, num_bins: int) -> np.ndarray:
    """EOS, then the bins in id order: column 0 is EOS, column c >= 1 is bin c - 1."""
    return np.concatenate([[EOS_ID], np.arange(vocab_size - num_bins, vocab_size)]).astype(np.int32)


def _candidate_columns(num_bins: int) -> tuple[jax.Array, jax.Array]:
    """(1, C) candidate columns and their bin index (-1 for the EOS column)."""
    columns = jnp.arange(num_bins + 1, dtype=jnp.int32)[None, :]
    return columns, columns - 1


@jax.tree_util.register_pytree_node_class
class BoxConstraint(Constraint):
    """Exactly 4 * num_boxes bins ``<x0> <y0> <x1> <y1>`` per box, then EOS; x1 >= x0 and y1 >= y0."""

    def __init__(self, *, vocab_size: int, num_boxes: int = 1, num_bins: int = NUM_BINS):
        self.vocab_size, self.num_bins = _check_vocab(vocab_size, num_bins)
        self.num_boxes = _positive("num_boxes", num_boxes)

    @property
    def min_steps(self) -> int:
        return 4 * self.num_boxes

    @property
    def max_steps(self) -> int:
        return 4 * self.num_boxes

    def init(self, batch_size: int) -> BinState:
        return _bin_init(batch_size)

    def allowed(self, state: BinState) -> jax.Array:
        ids, bins = _ids_and_bins(self.vocab_size, self.num_bins)
        corner = (state.position % 4)[:, None]
        # x1 (corner 2) may not be left of x0, y1 (corner 3) not above y0; equal is a degenerate but valid box.
        lowest = jnp.where(corner == 2, state.x0[:, None], jnp.where(corner == 3, state.y0[:, None], 0))
        writing = (state.position < 4 * self.num_boxes)[:, None]
        return jnp.where(writing, bins >= lowest, ids == EOS_ID)

    @property
    def candidate_ids(self) -> np.ndarray:
        return _bin_candidates(self.vocab_size, self.num_bins)

    def allowed_candidates(self, state: BinState) -> jax.Array:
        columns, bins = _candidate_columns(self.num_bins)
        corner = (state.position % 4)[:, None]
        lowest = jnp.where(corner == 2, state.x0[:, None], jnp.where(corner == 3, state.y0[:, None], 0))
        writing = (state.position < 4 * self.num_boxes)[:, None]
        return jnp.where(writing, bins >= lowest, columns == 0)

    def advance(self, state: BinState, tokens: jax.Array) -> BinState:
        k = tokens - (self.vocab_size - self.num_bins)
        corner = state.position % 4
        return BinState(
            position=jnp.minimum(state.position + 1, 4 * self.num_boxes + 1),
            x0=jnp.where(corner == 0, k, state.x0),
            y0=jnp.where(corner == 1, k, state.y0),
        )

    # num_boxes is a leaf (traced): every box count shares one compilation of the search.
    def tree_flatten(self) -> tuple[tuple, tuple]:
        return (self.num_boxes,), (self.vocab_size, self.num_bins)

    @classmethod
    def tree_unflatten(cls, aux: tuple, children: tuple) -> BoxConstraint:
        self = object.__new__(cls)
        (self.vocab_size, self.num_bins), (self.num_boxes,) = aux, children
        return self

    def __repr__(self) -> str:
        return f"BoxConstraint(vocab_size={self.vocab_size}, num_boxes={self.num_boxes}, num_bins={self.num_bins})"


@jax.tree_util.register_pytree_node_class
class PolygonConstraint(Constraint):
    """Exactly 2 * num_points bins ``<x1> <y1> ... <xN> <yN>`` then EOS."""

    def __init__(self, *, vocab_size: int, num_points: int, num_bins: int = NUM_BINS):
        self.vocab_size, self.num_bins = _check_vocab(vocab_size, num_bins)
        self.num_points = _positive("num_points", num_points)

    @property
    def min_steps(self) -> int:
        return 2 * self.num_points

    @property
    def max_steps(self) -> int:
        return 2 * self.num_points

    def init(self, batch_size: int) -> BinState:
        return _bin_init(batch_size)

    def allowed(self, state: BinState) -> jax.Array:
        ids, bins = _ids_and_bins(self.vocab_size, self.num_bins)
        writing = (state.position < 2 * self.num_points)[:, None]
        return jnp.where(writing, bins >= 0, ids == EOS_ID)

    @property
    def candidate_ids(self) -> np.ndarray:
        return _bin_candidates(self.vocab_size, self.num_bins)

    def allowed_candidates(self, state: BinState) -> jax.Array:
        columns, bins = _candidate_columns(self.num_bins)
        writing = (state.position < 2 * self.num_points)[:, None]
        return jnp.where(writing, bins >= 0, columns == 0)

    def advance(self, state: BinState, tokens: jax.Array) -> BinState:
        return state.replace(position=jnp.minimum(state.position + 1, 2 * self.num_points + 1))

    # num_points is a leaf (traced): every point count shares one compilation of the search.
    def tree_flatten(self) -> tuple[tuple, tuple]:
        return (self.num_points,), (self.vocab_size, self.num_bins)

    @classmethod
    def tree_unflatten(cls, aux: tuple, children: tuple) -> PolygonConstraint:
        self = object.__new__(cls)
        (self.vocab_size, self.num_bins), (self.num_points,) = aux, children
        return self

    def __repr__(self) -> str:
        return (
            f"PolygonConstraint(vocab_size={self.vocab_size}, num_points={self.num_points}, "
            f"num_bins={self.num_bins})"
        )


# ---------------------------------------------------------------------------------------------------------
# Phrases: a trie over the allowed answers
# ---------------------------------------------------------------------------------------------------------


@struct.dataclass
class PhraseState:
    node: jax.Array  # (B,) int32 trie node: 0 the root, 1 the final state (after EOS)
    used: jax.Array  # (B, P) bool: answers already given in a list (list mode only)


ROOT, FINAL = 0, 1
# Table sizes are rounded up to these multiples, so that different answer sets of similar size share one
# compilation of the search (sizes are static; the padding rows are unreachable nodes / unused answers).
_NODE_BLOCK, _EDGE_BLOCK, _PHRASE_BLOCK = 64, 8, 32


def _round_up(value: int, block: int) -> int:
    return -(-value // block) * block


@jax.tree_util.register_pytree_node_class
class PhraseConstraint(Constraint):
    """One of `token_sequences` then EOS; or, with `separator`, several distinct ones joined by it.

    token_sequences: the answers as model ids without BOS (e.g. ``tokenizer.encode(" yes")``); a trailing EOS
    is accepted and dropped. Answers must be distinct and non-empty, and may not contain BOS, PAD or EOS.
    separator: one token id (e.g. ``tokenizer.encode(",")`` for the disease list ``" a, b"``: the space
    belongs to the next answer); None for a single answer. solo: indices of answers that may only be given
    alone in list mode (``" no finding"``).

    Tables (S trie nodes, E the most children of a node, P answers; sizes rounded up): `child_tokens` (S, E)
    with V filling empty edges, `child_nodes` (S, E), `terminal` (S,) the answer that ends at a node or -1,
    `reachable` (S, P) the answers that end in a node's subtree (row 0: all real answers), `solo_mask` (P,).
    Node 0 is the root and node 1 the final state; the trie's other nodes follow.
    """

    def __init__(
        self,
        token_sequences: Sequence[Sequence[int]],
        *,
        vocab_size: int,
        separator: int | None = None,
        solo: Sequence[int] = (),
    ):
        self.vocab_size = _positive("vocab_size", vocab_size)
        phrases = [self._clean(i, seq) for i, seq in enumerate(token_sequences)]
        if not phrases:
            raise ValueError("token_sequences: expected at least one answer")
        if len(set(phrases)) != len(phrases):
            duplicate = next(p for p in phrases if phrases.count(p) > 1)
            raise ValueError(f"token_sequences: answer {list(duplicate)} is given more than once")
        self.list_mode = separator is not None
        if self.list_mode:
            separator = int(separator)
            if not 3 <= separator < self.vocab_size:
                raise ValueError(f"separator: got {separator}, expected a token id in [3, {self.vocab_size})")
            if any(separator in p for p in phrases):
                raise ValueError(f"separator: token {separator} also occurs inside an answer")
        solo = sorted({int(i) for i in solo})
        if any(not 0 <= i < len(phrases) for i in solo):
            raise ValueError(f"solo: got {solo}, expected indices into the {len(phrases)} answers")
        self.phrases, self.separator = tuple(phrases), (separator if self.list_mode else -1)
        lengths = [len(p) for p in phrases]
        self.min_length = min(lengths)
        self.max_length = max(lengths)
        if self.list_mode:  # every listable answer once, with a separator between two
            listed = [n for i, n in enumerate(lengths) if i not in solo]
            self.max_length = max(self.max_length, sum(listed) + max(len(listed) - 1, 0))
        self.child_tokens, self.child_nodes, self.terminal, self.reachable = self._build_trie(phrases)
        self.solo_mask = np.zeros((self.reachable.shape[1],), bool)
        self.solo_mask[solo] = True

    def _clean(self, index: int, sequence: Sequence[int]) -> tuple[int, ...]:
        ids = [int(t) for t in sequence]
        if ids and ids[-1] == EOS_ID:
            ids = ids[:-1]
        if not ids:
            raise ValueError(f"token_sequences[{index}]: an empty answer")
        bad = [t for t in ids if t in (BOS_ID, PAD_ID, EOS_ID) or not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(
                f"token_sequences[{index}]: id {bad[0]} is a special (BOS/PAD/EOS) or outside [0, {self.vocab_size})"
            )
        return tuple(ids)

    def _build_trie(self, phrases: list[tuple[int, ...]]) -> tuple[np.ndarray, ...]:
        children: list[dict[int, int]] = [{}, {}]  # ROOT, FINAL
        terminal = [-1, -1]
        for p, phrase in enumerate(phrases):
            node = ROOT
            for token in phrase:
                if token not in children[node]:
                    children[node][token] = len(children)
                    children.append({})
                    terminal.append(-1)
                node = children[node][token]
            terminal[node] = p
        nodes = _round_up(len(children), _NODE_BLOCK)
        width = _round_up(max(len(c) for c in children), _EDGE_BLOCK)
        count = _round_up(len(phrases), _PHRASE_BLOCK)
        child_tokens = np.full((nodes, width), self.vocab_size, np.int32)
        child_nodes = np.full((nodes, width), FINAL, np.int32)
        for node, edges in enumerate(children):
            for e, (token, child) in enumerate(edges.items()):
                child_tokens[node, e], child_nodes[node, e] = token, child
        terminal_table = np.full((nodes,), -1, np.int32)
        terminal_table[: len(terminal)] = terminal
        reachable = np.zeros((nodes, count), bool)
        for node in reversed(range(len(children))):  # a child's id is larger than its parent's
            if terminal[node] >= 0:
                reachable[node, terminal[node]] = True
            for child in children[node].values():
                reachable[node] |= reachable[child]
        return child_tokens, child_nodes, terminal_table, reachable

    # --- lengths ----------------------------------------------------------------------------------------

    @property
    def min_steps(self) -> int:
        return self.min_length

    @property
    def max_steps(self) -> int:
        return self.max_length

    # --- automaton --------------------------------------------------------------------------------------

    def init(self, batch_size: int) -> PhraseState:
        return PhraseState(
            node=jnp.full((batch_size,), ROOT, jnp.int32),
            used=jnp.zeros((batch_size, self.reachable.shape[1]), bool),
        )

    def _available(self, used: jax.Array) -> jax.Array:
        """(B, P): answers that may still be completed (real, unused; solo ones only in an empty list)."""
        real = jnp.asarray(self.reachable)[ROOT][None, :]
        solo = jnp.asarray(self.solo_mask)[None, :]
        return real & ~used & (~solo | ~jnp.any(used, axis=1, keepdims=True))

    def allowed(self, state: PhraseState) -> jax.Array:
        rows = state.node.shape[0]
        available = self._available(state.used)  # (B, P)
        tokens = jnp.asarray(self.child_tokens)[state.node]  # (B, E)
        children = jnp.asarray(self.child_nodes)[state.node]
        # An edge is open if an answer that is still available ends below it.
        opens = jnp.any(jnp.asarray(self.reachable)[children] & available[:, None, :], axis=-1)
        opens &= tokens < self.vocab_size
        mask = (
            jnp.zeros((rows, self.vocab_size), bool)
            .at[jnp.arange(rows)[:, None], jnp.where(opens, tokens, self.vocab_size)]
            .set(True, mode="drop")
        )
        ending = jnp.asarray(self.terminal)[state.node]  # (B,) the answer complete at this node, or -1
        at = jnp.maximum(ending, 0)
        complete = (ending >= 0) & jnp.take_along_axis(available, at[:, None], axis=1)[:, 0]
        vocab = jnp.arange(self.vocab_size)[None, :]
        mask |= (vocab == EOS_ID) & (complete | (state.node == FINAL))[:, None]
        if self.list_mode:
            # A separator needs a further answer that can still follow: listable, available, not this one.
            solo = jnp.asarray(self.solo_mask)
            others = available & ~solo[None, :] & (jnp.arange(solo.shape[0])[None, :] != ending[:, None])
            separate = complete & ~solo[at] & jnp.any(others, axis=1)
            mask |= (vocab == self.separator) & separate[:, None]
        return mask

    def advance(self, state: PhraseState, tokens: jax.Array) -> PhraseState:
        hit = jnp.asarray(self.child_tokens)[state.node] == tokens[:, None]  # (B, E)
        child = jnp.take_along_axis(
            jnp.asarray(self.child_nodes)[state.node], jnp.argmax(hit, axis=1)[:, None], axis=1
        )[:, 0]
        node = jnp.where(jnp.any(hit, axis=1), child, FINAL)  # EOS, or a token that was not allowed
        used = state.used
        if self.list_mode:
            ending = jnp.asarray(self.terminal)[state.node]
            separated = (tokens == self.separator) & (ending >= 0)
            answer = jnp.arange(used.shape[1])[None, :] == ending[:, None]
            used = used | (separated[:, None] & answer)
            node = jnp.where(separated, ROOT, node)
        return PhraseState(node=node.astype(jnp.int32), used=used)

    # --- pytree -----------------------------------------------------------------------------------------

    # Everything that depends on the answers is a leaf, so answer sets whose (rounded) tables have the same
    # shapes share one compilation of the search; only the vocabulary size and the mode are static.
    _LEAVES = (
        "child_tokens", "child_nodes", "terminal", "reachable", "solo_mask", "separator", "min_length",
        "max_length",
    )  # fmt: skip

    def tree_flatten(self) -> tuple[tuple, tuple]:
        return tuple(getattr(self, name) for name in self._LEAVES), (self.vocab_size, self.list_mode)

    @classmethod
    def tree_unflatten(cls, aux: tuple, children: tuple) -> PhraseConstraint:
        self = object.__new__(cls)
        self.vocab_size, self.list_mode = aux
        self.phrases = None  # not carried through jit
        for name, value in zip(cls._LEAVES, children, strict=True):
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        count = "?" if self.phrases is None else len(self.phrases)
        mode = f", separator={self.separator}" if self.list_mode else ""
        return f"PhraseConstraint({count} answers, vocab_size={self.vocab_size}{mode})"
