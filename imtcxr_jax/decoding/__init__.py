"""Decoding: the jitted beam search of the original generator (spec §14) and constraint automata that make
structured answers well-formed by construction (DESIGN.md decision 7)."""

from imtcxr_jax.decoding.beam_search import BeamResult, beam_search, decode_batch
from imtcxr_jax.decoding.constraints import BoxConstraint, Constraint, PhraseConstraint, PolygonConstraint

__all__ = [
    "BeamResult",
    "BoxConstraint",
    "Constraint",
    "PhraseConstraint",
    "PolygonConstraint",
    "beam_search",
    "decode_batch",
]
