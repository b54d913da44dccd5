"""PTB-style tokenisation of report text, as pycocoevalcap does it before scoring.

pycocoevalcap runs Stanford CoreNLP 3.4.1's ``PTBTokenizer -preserveLines -lowerCase`` over every caption
(newlines replaced by spaces, one caption per line), then drops the tokens in its punctuation list
(`COCO_PUNCTUATION`). Two backends give that same result here:

* ``"python"`` (default): a pure-Python lexer written from the tokenizer's observed behaviour (probed on the
  jar; no code taken from it). It reproduces what matters after punctuation removal on report text: words with
  internal hyphens, slashes and underscores stay whole; numbers (``1.5``, ``1,000``, ``3:45``, ``10/12/2020``,
  ``-5``) stay whole, and ``1.5cm`` splits into ``1.5 cm`` while ``5mm`` does not; clitics split
  (``don't`` → ``do n't``, ``heart's`` → ``heart 's``, ``cannot`` → ``can not``); a sentence-final period
  splits off, except after the abbreviations the jar keeps (``dr.``, ``vs.``, ``etc.``, month names, single
  letters, acronyms like ``e.g.``; ``no.``/``fig.`` only before a number); brackets become ``-lrb-`` etc.
  which — a quirk of pycocoevalcap — survive, because its list holds them in upper case while the text was
  lower-cased; runs such as ``!!!`` or ``??`` survive too. Known divergences (rare in reports): text glued
  around an ellipsis (``were...top-normal``), SGML tags with attributes, ``rock'n'roll``-style inner clitics, ``'tis``, and a few
  abbreviation contexts the jar decides with longer look-ahead. Like pycocoevalcap, the end of one text
  looks ahead into the next text of the same batch (see `ptb_tokenize_line`).
* ``"corenlp"``: runs the very jar bundled with pycocoevalcap (needs pycocoevalcap and Java), writing its
  input to a private temporary directory rather than into site-packages as pycocoevalcap does.

``"auto"`` picks ``"corenlp"`` when it is available and ``"python"`` otherwise; every report-metric result
records which one ran. Carriage returns and Unicode line separators are turned into spaces first (the jar
would treat them as line breaks and misalign the output lines, a failure mode pycocoevalcap itself has).
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from typing import NamedTuple

# Tokens pycocoevalcap removes after tokenisation (its PUNCTUATIONS list). The upper-case bracket names never
# match lower-cased output, so brackets survive as "-lrb-" etc.; we keep the list as is to score identically.
COCO_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

_CORENLP_JAR = "stanford-corenlp-3.4.1.jar"

# --- abbreviations, as observed on the CoreNLP 3.4.1 jar -----------------------------------------------------
# fmt: off
# Always keep their period, in any letter case.
_ABBREV_ALWAYS = frozenset([
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    "mon", "tue", "tues", "wed", "thu", "thurs", "fri",
    "mr", "mrs", "ms", "dr", "prof", "gen", "gov", "col", "sgt", "lt", "rt", "rep", "sen", "capt", "cmdr",
    "adm", "maj", "hon", "rev", "messrs", "jr", "sr", "st", "ave", "blvd", "mt", "ft", "dept", "univ",
    "inc", "co", "corp", "ltd", "bros", "assn", "est", "tel", "natl", "intl", "ct", "vs", "etc", "al", "cf",
    "seq", "mo", "ariz", "calif", "colo", "conn", "fla", "ga", "ind", "kan", "kans", "ky", "md", "mich",
    "minn", "mont", "neb", "nev", "okla", "penn", "tenn", "va", "vt", "wis", "wyo",
])
# Keep their period only when capitalised or in upper case ("PA." keeps it, "pa." does not): US state
# abbreviations that are also English words.
_ABBREV_CAPITALISED = frozenset(["del", "ill", "la", "mass", "miss", "ore", "tex", "wash", "pa"])
# Keep their period only before a number ("No. 5", "fig. 2").
_ABBREV_BEFORE_NUMBER = frozenset(["art", "ca", "fig", "figs", "no", "nos", "op", "pp", "prop"])
# A single letter keeps its period unless the next word is one of these sentence openers, capitalised or in
# upper case and standing alone ("r. The" splits, "r. the" and "r. Compared" do not).
_SENTENCE_OPENERS = frozenset([
    "the", "he", "she", "it", "they", "we", "you", "there", "this", "that", "these", "a", "an", "in", "at",
    "her", "their", "our", "what", "when", "if", "but", "so", "then", "however", "since", "while", "here",
    "now", "as", "after", "about", "some", "many", "one",
])
# fmt: on
# Whole words the jar splits in two.
_SPLIT_WORDS = {"cannot": 3, "gonna": 3, "gotta": 3, "wanna": 3, "lemme": 3, "gimme": 3}

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}

_ALNUM = r"[^\W_]"  # a Unicode letter or digit
# Candidate token patterns, tried at each position; the longest match wins (as in a flex lexer).
_CANDIDATES = [
    ("url", re.compile(r"(?:https?|ftp)://[^\s<>\"()]*[^\s<>\"().,;:!?]")),
    ("email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")),
    ("acronym", re.compile(r"[A-Za-z](?:\.[A-Za-z])+\.")),
    # letter-initial segments joined by . ! or ? ("effusion.The" as one token), then optional hyphen parts
    ("dotted", re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[.!?][A-Za-z][A-Za-z0-9]*)+(?:-[A-Za-z0-9]+)*")),
    ("abbrev", re.compile(r"[A-Za-z]+\.")),
    ("number", re.compile(r"[+-]?(?:\d+|\.\d+)(?:[.,:/-]\d+)*")),
    ("word", re.compile(rf"{_ALNUM}+(?:(?:[-_/]|['’]){_ALNUM}+)*")),
    ("year", re.compile(r"'\d\d$")),  # '90 as a year, when it ends the chunk
    ("clitic", re.compile(r"['’](?:s|re|ve|ll|d|m)(?![A-Za-z])", re.IGNORECASE)),
    ("emoticon", re.compile(r"[:;]-?[()\[\]DPp](?![A-Za-z0-9])")),
    ("sgml", re.compile(r"</?[A-Za-z][A-Za-z0-9]*>")),
    ("ellipsis", re.compile(r"\.\.\.+|…")),
    ("dashes", re.compile(r"--+|[—–]")),
    ("underscores", re.compile(r"_+")),
    ("exclaim", re.compile(r"[?!]+")),
    ("symbol", re.compile(r"\S")),
]
_FRACTION = re.compile(r"\d+/\d+")
_TAKES_PERIOD = frozenset(["word", "number", "dotted", "abbrev"])
_IN_SENTENCE = frozenset(",;:")
_CONTRACTION = re.compile(r"^(?P<stem>.+?)(?P<clitic>n't|'(?:s|re|ve|ll|d|m))$", re.IGNORECASE)
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def _keeps_period(stem: str, lookahead: _Lookahead) -> bool:
    """Whether the jar keeps the period after `stem` (a run of letters) as part of the token."""
    lower = stem.lower()
    if lower in _ABBREV_ALWAYS:
        return True
    if lower in _ABBREV_CAPITALISED:
        return stem in (stem.capitalize(), stem.upper())
    if lower in _ABBREV_BEFORE_NUMBER:
        return lookahead.adjacent is not None and lookahead.adjacent[:1].isdigit()
    if len(stem) == 1:
        word = lookahead.any
        return word is None or not (word.lower() in _SENTENCE_OPENERS and word[0].isupper())
    return False


class _Lookahead(NamedTuple):
    """What follows a chunk: `adjacent`, the next chunk when nothing but spaces or one line break separates
    them; `any`, the next chunk across any number of line breaks. (The jar reads the captions of a batch as
    one stream, so its look-ahead crosses into the next caption; we follow it to score identically.)"""

    adjacent: str | None
    any: str | None


def _lex_chunk(chunk: str, lookahead: _Lookahead) -> list[str]:
    """Tokenise one whitespace-free chunk, given what follows it."""
    tokens: list[str] = []
    i = 0
    while i < len(chunk):
        best_kind, best_end = "", i
        for kind, pattern in _CANDIDATES:
            match = pattern.match(chunk, i)
            if match is None or match.end() <= best_end:  # the longest match wins; ties go to the earlier
                continue
            if kind == "abbrev":
                # The period belongs to the word only for the abbreviations the jar knows; the look-ahead is
                # the rest of this chunk if any, else the next chunk.
                rest = chunk[match.end() :]
                if not _keeps_period(match.group()[:-1], _Lookahead(rest, rest) if rest else lookahead):
                    continue
            best_kind, best_end = kind, match.end()
        if (
            best_kind in _TAKES_PERIOD
            and "/" not in chunk[i:best_end]
            and chunk[best_end : best_end + 1] == "."
            and chunk[best_end + 1 : best_end + 2] in _IN_SENTENCE
        ):
            best_end += 1  # a period right before , ; or : stays on the word ("no.;" -> "no." ";")
        text = chunk[i:best_end]
        i = best_end
        if best_kind == "word":
            tokens.extend(_split_word(text.replace("’", "'")))
        elif best_kind == "clitic":
            tokens.append(text.replace("’", "'"))
        elif best_kind == "emoticon":
            tokens.append("".join(_BRACKETS.get(char, char) for char in text))
        elif best_kind == "ellipsis":
            tokens.append("...")
        elif best_kind == "dashes":
            tokens.append("--")
        elif text in _BRACKETS:
            tokens.append(_BRACKETS[text])
        elif text in ('"', "“", "”"):
            tokens.append("''")
        elif text in ("‘", "’"):
            tokens.append("'")
        else:
            tokens.append(text)
    return tokens


def _split_word(word: str) -> list[str]:
    """Split clitics off a word the way PTB does (``don't`` → ``do n't``, ``cannot`` → ``can not``)."""
    cut = _SPLIT_WORDS.get(word.lower())
    if cut is not None:
        return [word[:cut], word[cut:]]
    match = _CONTRACTION.match(word)
    if match is not None and "'" not in match.group("stem"):
        return [match.group("stem"), match.group("clitic")]
    return [word]


def ptb_tokenize_line(text: str, following: Sequence[str] = ()) -> list[str]:
    """PTB-tokenise one text (line breaks count as spaces) and lower-case it, keeping punctuation tokens.

    Args:
      text: the text.
      following: the texts after it in the same batch, if any; the jar's look-ahead at the end of a text reaches
        into them (it decides "no." before a number and "x." before "The" that way).
    """
    return _tokenize_line(text, _batch_lookahead(following))


def _tokenize_line(text: str, after: _Lookahead) -> list[str]:
    text = _LINE_BREAKS.sub(" ", text)
    spans = [(match.start(), match.end()) for match in re.finditer(r"\S+", text)]
    chunks = [text[start:end] for start, end in spans]
    tokens: list[str] = []
    skip = 0  # characters at the start of the current chunk already consumed by a merged fraction
    for index, chunk in enumerate(chunks):
        next_chunk = chunks[index + 1] if index + 1 < len(chunks) else None
        chunk_tokens = _lex_chunk(chunk[skip:], _Lookahead(next_chunk, next_chunk) if next_chunk else after)
        skip = 0
        # A whole number, exactly one space, then a fraction make one token joined by a no-break space, as the
        # jar does ("2 1/2" -> "2\u00a01/2"; "2 10/12/2020" -> "2\u00a010/12", "/", "2020").
        fraction = _FRACTION.match(next_chunk) if next_chunk else None
        if fraction and text[spans[index][1] : spans[index + 1][0]] == " " and _is_integer(chunk_tokens):
            chunk_tokens[-1] += "\u00a0" + fraction.group()
            skip = fraction.end()
        tokens.extend(chunk_tokens)
    return [token.lower() for token in tokens]


def _is_integer(tokens: list[str]) -> bool:
    return bool(tokens) and tokens[-1].isascii() and tokens[-1].isdigit()


def _batch_lookahead(following: Sequence[str]) -> _Lookahead:
    """The look-ahead at the end of a text, from the texts that follow it in the batch."""
    adjacent = None
    for position, text in enumerate(following):
        words = _LINE_BREAKS.sub(" ", text).split()
        if words:
            return _Lookahead(words[0] if position == 0 else adjacent, words[0])
    return _Lookahead(adjacent, None)


def _strip_punctuation(tokens: Sequence[str]) -> str:
    return " ".join(token for token in tokens if token not in COCO_PUNCTUATION)


@functools.cache
def corenlp_jar() -> pathlib.Path | None:
    """Path of the CoreNLP 3.4.1 jar bundled with pycocoevalcap, or None when pycocoevalcap is absent."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        jar = pathlib.Path(location) / "tokenizer" / _CORENLP_JAR
        if jar.is_file():
            return jar
    return None


def corenlp_unavailable_reason() -> str | None:
    """Why the CoreNLP backend cannot run here, or None when it can."""
    if corenlp_jar() is None:
        return "pycocoevalcap is not installed (pip install pycocoevalcap), so its CoreNLP tokenizer jar is missing"
    if shutil.which("java") is None:
        return "java was not found on PATH; the CoreNLP PTB tokenizer needs a Java runtime"
    return None


def _corenlp_tokenize(texts: Sequence[str]) -> list[str]:
    reason = corenlp_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"PTB tokenizer backend 'corenlp' is unavailable: {reason}")
    lines = [_LINE_BREAKS.sub(" ", text) for text in texts]
    with tempfile.TemporaryDirectory(prefix="imtcxr-ptb-") as tmp:
        path = pathlib.Path(tmp) / "captions.txt"
        path.write_text("\n".join(lines), encoding="utf-8")
        command = ["java", "-cp", str(corenlp_jar()), "edu.stanford.nlp.process.PTBTokenizer"]
        command += ["-preserveLines", "-lowerCase", str(path)]
        done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"CoreNLP PTBTokenizer failed (exit {done.returncode}): {done.stderr.decode()[-2000:]}"
        )
    out_lines = done.stdout.decode("utf-8").split("\n")
    if len(out_lines) < len(lines):
        raise RuntimeError(
            f"CoreNLP PTBTokenizer returned {len(out_lines)} lines for {len(lines)} texts; cannot align them"
        )
    # pycocoevalcap splits each output line on single spaces after stripping its right end.
    return [_strip_punctuation(line.rstrip().split(" ")) for line in out_lines[: len(lines)]]


def resolve_tokenizer(backend: str) -> str:
    """Map ``"auto"`` to the backend that will run (``"corenlp"`` if available, else ``"python"``)."""
    if backend == "auto":
        return "corenlp" if corenlp_unavailable_reason() is None else "python"
    if backend not in ("python", "corenlp"):
        raise ValueError(f"unknown PTB tokenizer backend {backend!r}; expected 'auto', 'python' or 'corenlp'")
    return backend


def ptb_tokenize(texts: Sequence[str], backend: str = "python") -> list[str]:
    """Tokenise texts as pycocoevalcap's PTBTokenizer does: lower-cased tokens joined by single spaces, with
    pycocoevalcap's punctuation tokens removed.

    Args:
      texts: one report (or caption) per item.
      backend: ``"python"`` (pure Python, no Java), ``"corenlp"`` (the jar bundled with pycocoevalcap) or
        ``"auto"`` (``"corenlp"`` when available, else ``"python"``).
    """
    backend = resolve_tokenizer(backend)
    if backend == "corenlp":
        return _corenlp_tokenize(texts)
    return [
        _strip_punctuation(ptb_tokenize_line(text, texts[index + 1 :])) for index, text in enumerate(texts)
    ]
