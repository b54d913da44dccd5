"""Report-generation metrics as pycocoevalcap computes them: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D.

Every function takes already tokenised texts (tokens joined by spaces, e.g. from `ptb.ptb_tokenize`), one
hypothesis per item and one or more references per item, and scores them the way pycocoevalcap 1.2 does, so
numbers are comparable with the report-generation literature. BLEU, ROUGE-L and CIDEr-D are re-implemented
here from their definitions (Papineni et al. 2002; Lin 2004; Vedantam et al. 2015) with pycocoevalcap's
conventions, which are written next to the code that follows them. METEOR is the Meteor 1.5 jar shipped in the
pycocoevalcap wheel, driven over its ``-stdio`` protocol; without pycocoevalcap or Java it is reported as
unavailable, with the reason, never estimated.

`score_reports` tokenises raw report text and returns all of them in one dictionary.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib
import re
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from imtcxr_jax.evaluation import ptb

References = Sequence[str | Sequence[str]]

# pycocoevalcap's BLEU guards its divisions with these two constants; with them a hypothesis without any
# matching n-gram gives a tiny positive number instead of an error, and an empty corpus gives 0.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9


@dataclasses.dataclass(frozen=True)
class CorpusScore:
    """A corpus-level score and the per-item scores it summarises."""

    score: float
    per_item: list[float]


def _as_reference_lists(references: References, n_hypotheses: int) -> list[list[str]]:
    """Normalise references to one list of strings per hypothesis, checking the pairing."""
    lists = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    if len(lists) != n_hypotheses:
        raise ValueError(
            f"got {len(lists)} reference entries for {n_hypotheses} hypotheses; they must pair up"
        )
    for index, refs in enumerate(lists):
        if not refs:
            raise ValueError(f"item {index} has no reference; every hypothesis needs at least one")
    return lists


def _ngram_counts(tokens: Sequence[str], max_n: int) -> Counter[tuple[str, ...]]:
    """Counts of all 1..max_n-grams of a token sequence."""
    counts: Counter[tuple[str, ...]] = Counter()
    for n in range(1, max_n + 1):
        counts.update(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return counts


# --- BLEU ---------------------------------------------------------------------------------------------------


def bleu(references: References, hypotheses: Sequence[str], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..max_n, as pycocoevalcap's ``Bleu(4)`` computes it.

    Conventions (pycocoevalcap): tokens are whitespace-separated; n-gram matches are clipped by the largest count
    of that n-gram in any single reference; matches and candidate n-grams are summed over the corpus before the
    modified precisions p_n are taken; BLEU-N is the geometric mean of p_1..p_N (no smoothing, but numerator
    and denominator guarded by 1e-15 and 1e-9); the brevity penalty uses, per hypothesis, the reference length
    closest to the hypothesis length (the shorter one on a tie), summed over the corpus.

    Returns:
      [BLEU-1, ..., BLEU-max_n].
    """
    return bleu_from_statistics(bleu_statistics(references, hypotheses, max_n).sum(axis=0), max_n)


def bleu_statistics(references: References, hypotheses: Sequence[str], max_n: int = 4) -> np.ndarray:
    """Per item, the counts corpus BLEU sums: (n_items, 2 max_n + 2) int64 rows of clipped matches for
    n = 1..max_n, candidate n-grams for n = 1..max_n, the hypothesis length and the closest reference length.
    A bootstrap replicate's BLEU is `bleu_from_statistics` of the sum of its rows."""
    ref_lists = _as_reference_lists(references, len(hypotheses))
    rows = np.zeros((len(hypotheses), 2 * max_n + 2), dtype=np.int64)
    for row, refs, hyp in zip(rows, ref_lists, hypotheses, strict=True):
        hyp_tokens = hyp.split()
        ref_tokens = [ref.split() for ref in refs]
        max_ref_counts: Counter[tuple[str, ...]] = Counter()
        for tokens in ref_tokens:
            max_ref_counts |= _ngram_counts(tokens, max_n)  # | keeps the maximum count per n-gram
        for gram, count in _ngram_counts(hyp_tokens, max_n).items():
            row[len(gram) - 1] += min(count, max_ref_counts[gram])
        for n in range(1, max_n + 1):
            row[max_n + n - 1] = max(0, len(hyp_tokens) - n + 1)
        row[2 * max_n] = len(hyp_tokens)
        closest = min((abs(len(tokens) - len(hyp_tokens)), len(tokens)) for tokens in ref_tokens)
        row[2 * max_n + 1] = closest[1]
    return rows


def bleu_from_statistics(totals: Sequence[int] | np.ndarray, max_n: int = 4) -> list[float]:
    """[BLEU-1, ..., BLEU-max_n] from corpus totals of `bleu_statistics` (its rows summed)."""
    totals = [int(value) for value in totals]
    if len(totals) != 2 * max_n + 2:
        raise ValueError(f"expected {2 * max_n + 2} BLEU statistics for max_n={max_n}, got {len(totals)}")
    matches, candidates = totals[:max_n], totals[max_n : 2 * max_n]
    hyp_length, ref_length = totals[2 * max_n], totals[2 * max_n + 1]
    scores = []
    product = 1.0
    for n in range(max_n):
        product *= (matches[n] + _BLEU_TINY) / (candidates[n] + _BLEU_SMALL)
        scores.append(product ** (1.0 / (n + 1)))
    ratio = (hyp_length + _BLEU_TINY) / (ref_length + _BLEU_SMALL)
    if ratio < 1.0:
        penalty = math.exp(1.0 - 1.0 / ratio)
        scores = [score * penalty for score in scores]
    return scores


# --- ROUGE-L ------------------------------------------------------------------------------------------------


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences (dynamic programming, O(len a·len b))."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token_a in a:
        current = [0] * (len(b) + 1)
        for j, token_b in enumerate(b, start=1):
            current[j] = previous[j - 1] + 1 if token_a == token_b else max(previous[j], current[j - 1])
        previous = current
    return previous[-1]


def rouge_l(references: References, hypotheses: Sequence[str], beta: float = 1.2) -> CorpusScore:
    """ROUGE-L as pycocoevalcap's ``Rouge`` computes it: the mean over items of an LCS F-measure.

    Conventions (pycocoevalcap): tokens come from splitting on single spaces (so an empty text is one empty
    token); with several references, the largest precision and the largest recall are taken separately; the
    F-measure weights recall by beta = 1.2, F = (1 + β²)·P·R / (R + β²·P), and is 0 when P or R is 0.
    """
    ref_lists = _as_reference_lists(references, len(hypotheses))
    per_item = []
    for refs, hyp in zip(ref_lists, hypotheses, strict=True):
        hyp_tokens = hyp.split(" ")
        precisions, recalls = [], []
        for ref in refs:
            ref_tokens = ref.split(" ")
            lcs = _lcs_length(ref_tokens, hyp_tokens)
            precisions.append(lcs / len(hyp_tokens))
            recalls.append(lcs / len(ref_tokens))
        precision, recall = max(precisions), max(recalls)
        if precision == 0 or recall == 0:
            per_item.append(0.0)
        else:
            per_item.append((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
    return CorpusScore(float(np.mean(per_item)) if per_item else 0.0, per_item)


# --- CIDEr-D ------------------------------------------------------------------------------------------------


def cider_d(
    references: References, hypotheses: Sequence[str], max_n: int = 4, sigma: float = 6.0
) -> CorpusScore:
    """CIDEr-D as pycocoevalcap's ``Cider`` computes it (mean over items, scaled by 10).

    Conventions (pycocoevalcap): n-grams of length 1..4 weighted by TF-IDF, the document frequency counted over
    the reference sets of the evaluated corpus (an item counts once per n-gram however many of its references
    hold it), idf = log(#items) − log(max(1, df)); per n, the hypothesis and each reference are compared by a
    cosine in which each hypothesis weight is clipped to the reference weight (min(h, r)·r) — left
    un-normalised when either vector is all zeros — times a Gaussian length penalty exp(−δ²/2σ²), σ = 6; the
    lengths entering δ are counted as pycocoevalcap counts them, in bigrams (i.e. max(0, tokens − 1)); the four
    n are averaged, the references averaged, and the result multiplied by 10. Because the IDF comes from the
    evaluated references, the score depends on the whole corpus and means little on a handful of reports.
    """
    ref_lists = _as_reference_lists(references, len(hypotheses))
    hyp_counts = [_ngram_counts(hyp.split(), max_n) for hyp in hypotheses]
    ref_counts = [[_ngram_counts(ref.split(), max_n) for ref in refs] for refs in ref_lists]
    document_frequency: Counter[tuple[str, ...]] = Counter()
    for counts in ref_counts:
        document_frequency.update(set().union(*counts))
    log_corpus_size = math.log(float(len(ref_counts))) if ref_counts else 0.0

    def tfidf(
        counts: Counter[tuple[str, ...]],
    ) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        vectors: list[dict[tuple[str, ...], float]] = [{} for _ in range(max_n)]
        length = 0
        for gram, count in counts.items():
            n = len(gram) - 1
            vectors[n][gram] = count * (log_corpus_size - math.log(max(1.0, document_frequency[gram])))
            if n == 1:
                length += count  # pycocoevalcap measures length in bigrams
        norms = [math.sqrt(sum(weight * weight for weight in vector.values())) for vector in vectors]
        return vectors, norms, length

    per_item = []
    for hyp, refs in zip(hyp_counts, ref_counts, strict=True):
        hyp_vectors, hyp_norms, hyp_length = tfidf(hyp)
        total = np.zeros(max_n)
        for ref in refs:
            ref_vectors, ref_norms, ref_length = tfidf(ref)
            penalty = math.exp(-((hyp_length - ref_length) ** 2) / (2 * sigma**2))
            for n in range(max_n):
                dot = sum(
                    min(weight, ref_vectors[n].get(gram, 0.0)) * ref_vectors[n].get(gram, 0.0)
                    for gram, weight in hyp_vectors[n].items()
                )
                if hyp_norms[n] != 0 and ref_norms[n] != 0:
                    dot /= hyp_norms[n] * ref_norms[n]
                total[n] += dot * penalty
        per_item.append(float(np.mean(total)) / len(refs) * 10.0)
    return CorpusScore(float(np.mean(per_item)) if per_item else 0.0, per_item)


# --- METEOR (Meteor 1.5 jar) -------------------------------------------------------------------------------


def meteor_jar() -> pathlib.Path | None:
    """Path of ``meteor-1.5.jar`` inside the installed pycocoevalcap, or None."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        jar = pathlib.Path(location) / "meteor" / "meteor-1.5.jar"
        if jar.is_file():
            return jar
    return None


def meteor_unavailable_reason() -> str | None:
    """Why METEOR cannot be computed here, or None when it can."""
    if meteor_jar() is None:
        return "pycocoevalcap is not installed (pip install pycocoevalcap); METEOR needs the Meteor 1.5 jar it ships"
    if shutil.which("java") is None:
        return "java was not found on PATH; the Meteor 1.5 jar needs a Java runtime"
    return None


class MeteorScorer:
    """A running Meteor 1.5 process (``-l en -norm``, as pycocoevalcap starts it), reused across calls.

    Starting the JVM and loading the paraphrase table takes seconds, so create one scorer and keep it; close it
    (or use it as a context manager) to end the process. Thread-safe.
    """

    def __init__(self, max_heap: str = "2G") -> None:
        reason = meteor_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"METEOR is unavailable: {reason}")
        jar = meteor_jar()
        assert jar is not None
        command = ["java", "-jar", f"-Xmx{max_heap}", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
        # The jar finds its paraphrase data relative to its own directory.
        self._process = subprocess.Popen(
            command,
            cwd=jar.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._lock = threading.Lock()

    def _exchange(self, line: str, n_replies: int) -> list[str]:
        process = self._process
        if process.stdin is None or process.stdout is None or process.poll() is not None:
            raise RuntimeError("the Meteor process is not running (closed, or it exited)")
        process.stdin.write((line + "\n").encode("utf-8"))
        process.stdin.flush()
        replies = []
        for _ in range(n_replies):
            reply = process.stdout.readline()
            if not reply:
                raise RuntimeError(f"the Meteor process exited (code {process.poll()}) before answering")
            replies.append(reply.decode("utf-8").strip())
        return replies

    def score(self, references: References, hypotheses: Sequence[str]) -> CorpusScore:
        """METEOR of tokenised hypotheses against their references: the jar's corpus score and per-item scores.

        As pycocoevalcap does, each item is sent as ``SCORE ||| ref ... ||| hyp`` to get its statistics, and
        all statistics in one ``EVAL`` line; ``|||`` is removed from the texts (it is the field separator),
        line breaks become spaces and double spaces single ones.
        """
        ref_lists = _as_reference_lists(references, len(hypotheses))
        if not hypotheses:
            return CorpusScore(0.0, [])
        with self._lock:
            stats = []
            for refs, hyp in zip(ref_lists, hypotheses, strict=True):
                fields = [_meteor_clean(ref) for ref in refs] + [_meteor_clean(hyp)]
                stats.append(self._exchange(" ||| ".join(["SCORE", *fields]), 1)[0])
            replies = self._exchange(" ||| ".join(["EVAL", *stats]), len(stats) + 1)
        return CorpusScore(float(replies[-1]), [float(reply) for reply in replies[:-1]])

    def close(self) -> None:
        """End the Meteor process."""
        if self._process.poll() is None:
            if self._process.stdin is not None:
                self._process.stdin.close()
            self._process.kill()
        self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _meteor_clean(text: str) -> str:
    # The field separator must not occur inside a field, and a line break would end the request early.
    return re.sub(r"[\r\n]", " ", text.replace("|||", "")).replace("  ", " ")


# --- everything at once -------------------------------------------------------------------------------------


def score_reports(
    references: Sequence[str],
    hypotheses: Sequence[str],
    *,
    tokenizer: str = "auto",
    meteor: MeteorScorer | bool | None = None,
) -> dict[str, Any]:
    """Score generated reports against reference reports with the pycocoevalcap metrics.

    Both sides are PTB-tokenised first (`ptb.ptb_tokenize`; lower-cased, punctuation removed).

    Args:
      references: one reference report per item.
      hypotheses: one generated report per item, paired with `references`.
      tokenizer: ``"auto"``, ``"python"`` or ``"corenlp"`` (see `ptb.ptb_tokenize`).
      meteor: a running `MeteorScorer` to reuse; None (default) to start one for this call if METEOR is
        available and report it as unavailable otherwise; False to skip METEOR.

    Returns:
      ``bleu_1`` .. ``bleu_4``, ``meteor`` (None when not computed, with ``meteor_unavailable`` saying why),
      ``rouge_l``, ``cider`` and ``tokenizer`` (the backend that ran).
    """
    if len(references) != len(hypotheses):
        raise ValueError(
            f"got {len(references)} references and {len(hypotheses)} hypotheses; they must pair up"
        )
    backend = ptb.resolve_tokenizer(tokenizer)
    refs = ptb.ptb_tokenize(references, backend)
    hyps = ptb.ptb_tokenize(hypotheses, backend)
    result: dict[str, Any] = {f"bleu_{n}": score for n, score in enumerate(bleu(refs, hyps), start=1)}
    result["meteor"] = None
    if meteor is False:
        result["meteor_unavailable"] = "METEOR was not requested"
    elif isinstance(meteor, MeteorScorer):
        result["meteor"] = meteor.score(refs, hyps).score
    elif (reason := meteor_unavailable_reason()) is not None:
        result["meteor_unavailable"] = reason
    else:
        with MeteorScorer() as scorer:
            result["meteor"] = scorer.score(refs, hyps).score
    result["rouge_l"] = rouge_l(refs, hyps).score
    result["cider"] = cider_d(refs, hyps).score
    result["tokenizer"] = backend
    return result
