"""A rule-based CheXpert-style labeler: 14 observations per report, each positive, negative or uncertain.

It follows the method of the CheXpert labeler (Irvin et al. 2019) and reads the same phrase lists, which are
third-party data (MIT) read at run time from a directory (never copied into this repository):

1. **Clean and split.** Lower-case; ``and/or`` → ``or``; a slash between letters → `` or ``; ``..`` → ``.``;
   ``vs.`` → ``versus``; sentences end at ``.``/``?``/``!`` before a space, and at line breaks.
2. **Mentions.** Every phrase of ``phrases/mention/<observation>.txt`` is searched as a plain substring
   (underscores in a phrase stand for spaces, so ``_line_`` needs word boundaries while ``atelecta`` also
   matches *atelectatic*); punctuation counts as a space for this search. A match overlapping an *unmention*
   of the same observation (``phrases/unmention``, plus the positional unmentions the CheXpert code generates
   for Cardiomegaly and Enlarged Cardiomediastinum, e.g. "over the heart") is dropped. The ``No Finding`` list
   names other abnormalities (emphysema, hernia, calcification, …) whose positive or uncertain mentions only
   switch No Finding off.
3. **Classify each mention**, in the CheXpert precedence: pre-negation uncertainty (-1: "cannot exclude X",
   "X is not excluded", "no new X"), then negation (0: "no X", "without X", "free of X", "negative for X",
   "no evidence of X", "X has resolved", "X is normal", "X within normal limits", "X removed", "X is no longer
   seen", "rather than X", …), then post-negation uncertainty (-1: "possible X", "may/could … X", "X may be
   present", "suspicious/concerning for X", "X versus Y", "X or Y", "borderline X", stable or unchanged heart
   size / cardiomediastinal contours, and the Edema phrases "vascular congestion", "pulmonary congestion",
   "indistinctness" and "vascular prominence", always uncertain), else positive (1).
4. **Aggregate per report**: any positive mention → 1, else negative and uncertain mentions together → -1,
   else the shared value; no mention → absent. A positive or uncertain "chf" / "heart failure" also makes
   Cardiomegaly uncertain. **No Finding** is 1 when no observation other than Support Devices — and no
   other-abnormality phrase — is positive or uncertain, and absent otherwise (never 0), as in CheXpert.

The CheXpert labeler decides step 3 on a dependency parse (NegBio's Semgrex patterns over a BLLIP parse),
which cannot run here; this module approximates those patterns with cue words and scopes over tokens. A cue
before the mention applies within the mention's clause: the clause ends at ``;``, ``:``, at *but*, *however*,
*although*, *which*, *except* …, and at a comma, *and* or *with* followed by a new assertion (*small*, *mild*,
*possible*, *the*, *there*, *no* …), so that "no effusion, pneumothorax or consolidation" negates all three
while "no effusion, small pneumothorax" does not; a negation cue must also not be separated from the mention
by a verb ("no effusion is seen and the heart is enlarged"). A cue after the mention must follow it closely,
across at most a few words and an auxiliary ("heart size is normal", "the effusions have resolved"). Expect
lower fidelity than a parser on long coordinations and nested clauses.

Two small additions to the published lists, on by default (`extra_unmentions`): "overlying the …" joins the
positional Cardiomegaly unmentions, and "plate-like", "platelike", "tubercul…", "septal line" and "kerley (b) line"
cannot count as Support Devices ("plate", "tube", "lines") — documented false positives of the lists.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
from collections.abc import Iterable, Sequence

# The 14 CheXpert observations, in CheXpert's column order and spelling.
OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NO_FINDING = "No Finding"
POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

# Where the shared data lives relative to the repository: <repo>/../shared/data/chexpert-labeler-phrases.
_DEFAULT_PHRASES_DIR = (
    pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "chexpert-labeler-phrases"
)


def default_phrases_dir() -> pathlib.Path:
    """The default phrase directory, ``<repo>/../shared/data/chexpert-labeler-phrases``, if it exists."""
    if not _DEFAULT_PHRASES_DIR.is_dir():
        raise FileNotFoundError(
            f"the CheXpert labeler phrase lists were not found at the default {_DEFAULT_PHRASES_DIR}; pass their "
            "directory (the one holding phrases/mention/*.txt) with --phrases-dir or `phrases_dir=` — they are "
            "third-party data (MIT, stanfordmlgroup/chexpert-labeler) and are not shipped with this project"
        )
    return _DEFAULT_PHRASES_DIR


# --- phrase lists ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PhraseLists:
    """The labeler's phrase lists, phrases lower-cased with underscores turned into spaces.

    Attributes:
      mention: observation -> phrases that mention it (13 observations; not No Finding).
      unmention: observation -> phrases whose matches cancel overlapping mentions.
      other_findings: the No Finding list: abnormalities outside the 13 observations.
      source: the directory they were read from.
    """

    mention: dict[str, tuple[str, ...]]
    unmention: dict[str, tuple[str, ...]]
    other_findings: tuple[str, ...]
    source: pathlib.Path


def _observation_name(path: pathlib.Path) -> str:
    return path.stem.replace("_", " ").title()


def _read_phrases(path: pathlib.Path) -> tuple[str, ...]:
    phrases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        phrase = line.rstrip("\r\n").replace("_", " ").lower()
        if phrase.strip():
            phrases.append(phrase)
    return tuple(phrases)


@functools.cache
def load_phrases(phrases_dir: str | pathlib.Path | None = None) -> PhraseLists:
    """Read the phrase lists from `phrases_dir` (the default when None; see `default_phrases_dir`).

    The directory may be the phrase-list root (holding ``phrases/mention``) or the ``phrases`` folder itself.
    """
    root = pathlib.Path(phrases_dir) if phrases_dir is not None else default_phrases_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"phrase directory {root} does not exist")
    base = root / "phrases" if (root / "phrases" / "mention").is_dir() else root
    mention_dir, unmention_dir = base / "mention", base / "unmention"
    if not mention_dir.is_dir():
        raise FileNotFoundError(
            f"{root} holds no phrase lists: expected {root}/phrases/mention/*.txt (or {root}/mention/*.txt), "
            "one file per observation, e.g. pleural_effusion.txt"
        )
    files = {_observation_name(path): path for path in sorted(mention_dir.glob("*.txt"))}
    missing = [name for name in OBSERVATIONS if name not in files]
    if missing:
        expected = ", ".join(f"{name.lower().replace(' ', '_')}.txt" for name in missing)
        raise FileNotFoundError(f"{mention_dir} lacks the phrase files for {missing}: expected {expected}")
    mention = {name: _read_phrases(files[name]) for name in OBSERVATIONS if name != NO_FINDING}
    unmention: dict[str, tuple[str, ...]] = {}
    if unmention_dir.is_dir():
        for path in sorted(unmention_dir.glob("*.txt")):
            name = _observation_name(path)
            if name not in OBSERVATIONS:
                raise ValueError(
                    f"{path}: unknown observation {name!r}; expected one of {list(OBSERVATIONS)}"
                )
            unmention[name] = _read_phrases(path)
    return PhraseLists(mention, unmention, _read_phrases(files[NO_FINDING]), root)


# Positional unmentions the CheXpert code generates: "in the heart" locates something, it does not describe
# the heart. "overlying the" is our addition.
_POSITIONS = ("over the", "overly the", "in the")
_SIDES = ("", " superior", " left", " right")
_EXTRA_UNMENTIONS: dict[str, tuple[str, ...]] = {
    "Support Devices": (
        "plate-like",
        "platelike",
        "plate like",
        "tubercul",
        "septal line",
        "kerley b line",
        "kerley line",
    ),
}


def _generated_unmentions(phrases: PhraseLists, extra: bool) -> dict[str, tuple[str, ...]]:
    positions = (*_POSITIONS, "overlying the") if extra else _POSITIONS
    prefixes = [position + side for position in positions for side in _SIDES]
    cardio = [
        phrase.strip().replace("the ", "")
        for phrase in phrases.mention["Cardiomegaly"]
        if phrase.strip() not in ("cardiomegaly", "cardiac enlargement")
    ]
    mediastinum = [phrase.strip() for phrase in phrases.mention["Enlarged Cardiomediastinum"]]
    generated = {
        "Cardiomegaly": tuple(f"{prefix} {phrase}" for prefix in prefixes for phrase in cardio),
        "Enlarged Cardiomediastinum": tuple(
            f"{prefix} {phrase}" for prefix in prefixes for phrase in mediastinum
        ),
    }
    if extra:
        for name, extra_phrases in _EXTRA_UNMENTIONS.items():
            generated[name] = generated.get(name, ()) + extra_phrases
    return generated


# --- cue vocabulary ----------------------------------------------------------------------------------------

# Words that end a clause outright.
_HARD_BREAKS = frozenset(
    [
        ";",
        ":",
        "but",
        "however",
        "although",
        "though",
        "whereas",
        "except",
        "aside",
        "apart",
        "which",
        "whose",
    ]
)
# A comma, "and" or "with" followed by one of these starts a new assertion.
_ASSERTION_STARTERS = frozenset(
    """small mild moderate large severe minimal trace tiny massive extensive moderately mildly slightly marked
    significant subtle new increased increasing decreased decreasing worsening worsened improved improving
    persistent persisting stable unchanged enlarged possible possibly probable probably likely questionable
    suspected suspicious concerning may might could consistent compatible suggesting suggestive the there this
    these it a an no not without""".split()  # noqa: SIM905 - a word list reads better as text
)
_SOFT_BREAKS = frozenset([",", "and", "with"])
_CONJUNCTIONS = frozenset(["and", "or", "nor"])
# Verbs (and modals) that separate a negation cue from a mention in another proposition.
_VERBS = frozenset(
    """is are was were be been being has have had seen noted identified demonstrated appears appear appeared
    remains remain remained persists persist persisted shows show showed shown measures measuring extends
    extending terminates terminating projects projecting overlies reflects represents suggests indicates
    may might could would can will should must does did do""".split()  # noqa: SIM905
)

# Cue phrases before a mention: (words, largest number of tokens allowed between cue and mention).
_PRE_NEG_UNCERTAIN_CUES: tuple[tuple[tuple[str, ...], int], ...] = tuple(
    (tuple(words.split()), gap)
    for words, gap in [
        ("cannot exclude", 8),
        ("can not exclude", 8),
        ("could not exclude", 8),
        ("cannot rule out", 8),
        ("can not rule out", 8),
        ("could not rule out", 8),
        ("not exclude", 8),
        ("difficult to exclude", 8),
        ("no evidence to rule out", 8),
        ("no new", 4),
        ("no new area of", 4),
    ]
)
_NEGATION_CUES: tuple[tuple[tuple[str, ...], int], ...] = tuple(
    (tuple(words.split()), gap)
    for words, gap in [
        ("no", 12),
        ("nor", 12),
        ("without", 12),
        ("negative for", 12),
        ("free of", 12),
        ("clear of", 12),
        ("absence of", 12),
        ("resolution of", 12),
        ("removal of", 12),
        ("disappearance of", 12),
        ("drainage of", 12),
        ("clearing of", 12),
        ("history of", 12),
        ("rather than", 12),
        ("instead of", 12),
        ("exclude", 8),
        ("rule out", 8),
        ("resolved", 2),
        ("removed", 2),
        ("cleared", 2),
        ("not", 3),
        ("normal", 3),
        ("unremarkable", 3),
        ("top-normal", 3),
    ]
)
_UNCERTAINTY_CUES: tuple[tuple[tuple[str, ...], int], ...] = tuple(
    (tuple(words.split()), gap)
    for words, gap in [
        (word, 10)
        for word in """possible possibly probable probably presumably presumed presumptive questionable question
        questioned suspect suspected suspicious suspicion concern concerning worrisome may might could would
        versus differential consider considered considering favor favored favoring borderline equivocal
        indeterminate uncertain suggestion correlate correlation""".split()  # noqa: SIM905
    ]
    + [("secondary to", 10), ("compatible with", 10), ("less likely", 10), ("can be", 10)]
)
# After "no"/"not"/"without", these words make the cue a pseudo-negation ("no change in the effusion").
_PSEUDO_NEGATIONS = (
    ("change",),
    ("significant", "change"),
    ("interval", "change"),
    ("significant", "interval", "change"),
    ("appreciable", "change"),
    ("increase",),
    ("decrease",),
    ("longer",),
    ("new",),  # "no new" is the pre-negation uncertainty rule
    ("changed",),
    ("significantly", "changed"),
    ("only",),
)
# Words naming the heart or mediastinal contour: stable/unchanged ones are uncertain (CheXpert's added rule).
_CONTOUR_HEADS = frozenset(
    """cardiomediastinal pericardial mediastinal mediastinum cardiomediastinum contour contours configuration
    silhouette silhouettes size heart shadow""".split()  # noqa: SIM905
)
_ALWAYS_UNCERTAIN = {
    "Edema": ("vascular congestion", "pulmonary congestion", "indistinctness", "vascular prominence")
}
_HEART_FAILURE = ("chf", "heart failure")

# Cues after a mention, matched on the following tokens joined by spaces. `_FILL` lets a few words (no verbs,
# no clause breaks) and an auxiliary chain sit between the mention and the cue.
_VERB_ALTERNATION = "|".join(sorted(_VERBS | {"cannot"}))
_FILL = rf"(?:(?!(?:{_VERB_ALTERNATION})\b)[^ ,;:.]+ ){{0,6}}?"
_AUX = (
    r"(?:(?:is|are|was|were|has|have|had|been|be|being|appears?|appeared|remains?|remained|seems?|looks?|now|"
    r"again|otherwise|also|still|stably|essentially|overall|completely|largely|entirely|totally|nearly|almost|"
    r"since|subsequently|significantly|to be) )*"
)
_POST_PRE_NEG_UNCERTAIN = re.compile(
    _FILL + r"(?:(?:cannot|can not|could not|may not) (?:be )?(?:entirely |completely |totally |definitely )?"
    r"(?:excluded|ruled out|exclude|rule out)|(?:is |are |was |were )?not (?:entirely |completely |totally )?"
    r"(?:excluded|ruled out))\b"
)
_POST_NEGATION = re.compile(
    _FILL
    + _AUX
    + r"(?:normal|unremarkable|top-normal|top normal|within normal limits|(?:at|within) (?:the )?upper limits? of "
    r"normal|resolved|cleared|removed|absent|no longer (?:seen|visible|present|evident|identified|demonstrated|"
    r"appreciated|visualized|noted)|not (?:significantly |substantially )?enlarged|not (?:seen|identified|present|"
    r"demonstrated|detected|evident|noted|visible))\b"
)
_POST_UNCERTAINTY = re.compile(
    _FILL
    + _AUX
    + r"(?:possible|possibly|probable|questionable|questioned|suspected|suspicious|a consideration|considered|"
    r"borderline|equivocal|indeterminate|uncertain|obscured|less likely|versus|vs|"
    r"not (?:well |clearly )?(?:visualized|evaluated|assessed)|not (?:well|clearly) seen|not appreciated|"
    r"(?:poorly|incompletely) (?:evaluated|visualized|assessed|seen)|difficult to (?:assess|evaluate|exclude)|"
    r"(?:may|might|could|would|can) (?:also |possibly |still )?be (?:\w+ly )?"
    r"(?:present|there|larger|worse|new|prominent|(?!related|based|located)\w+ed))\b"
)
_POST_STABLE = re.compile(
    _FILL
    + _AUX
    + r"(?:stable|unchanged|similar|not changed|not significantly changed|without (?:significant )?change)\b"
)
_PRE_STABLE_WORDS = frozenset(["stable", "unchanged", "similar"])


# --- sentences and tokens ----------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*|[^\sa-z0-9]")
_MATCH_MASK = re.compile(r"[.,;:!?()\[\]{}\"]")


@dataclasses.dataclass(frozen=True)
class Mention:
    """One phrase match and how it was classified.

    Attributes:
      observation: the CheXpert observation, or ``"other finding"`` for the No Finding list.
      phrase: the phrase that matched (as written in the list, underscores as spaces).
      sentence: the cleaned sentence it was found in.
      start, end: its character span in `sentence`.
      value: 1, 0 or -1.
      rule: which rule decided the value (e.g. ``"negation: no"``), for inspection.
    """

    observation: str
    phrase: str
    sentence: str
    start: int
    end: int
    value: int
    rule: str


def clean_report(text: str) -> str:
    """Normalise a report as the CheXpert labeler does before splitting it into sentences."""
    text = text.lower()
    text = re.sub(r"\band/or\b", "or", text)
    text = re.sub(r"(?<=[a-z])/(?=[a-z])", " or ", text)
    text = re.sub(r"\bvs\b\.?", "versus", text)
    text = re.sub(r"\b(e\.g|i\.e)\.", lambda match: match.group(1).replace(".", ""), text)
    text = re.sub(r"\.{2,}", ".", text)
    text = re.sub(r"([.,])(?=[a-z])", r"\1 ", text)  # a space after . and , before a word (not inside 1.5)
    return text


def split_sentences(text: str) -> list[str]:
    """Split cleaned report text into sentences at ``.``, ``?``, ``!`` before a space, and at line breaks."""
    sentences = []
    for line in re.split(r"[\r\n]+", text):
        for sentence in re.split(r"(?<=[.!?])\s+", line):
            sentence = " ".join(sentence.split())
            if sentence.strip(" .!?"):
                sentences.append(sentence)
    return sentences


def _tokens(sentence: str) -> tuple[list[str], list[int], list[int]]:
    matches = list(_TOKEN.finditer(sentence))
    return [m.group() for m in matches], [m.start() for m in matches], [m.end() for m in matches]


def _starts_assertion(tokens: Sequence[str], position: int) -> bool:
    """Whether the words from `position` on begin a new assertion (skipping a leading conjunction)."""
    while position < len(tokens) and tokens[position] in _CONJUNCTIONS:
        position += 1
    return position < len(tokens) and tokens[position] in _ASSERTION_STARTERS


def _clause_start(tokens: Sequence[str], first: int) -> int:
    """The index of the first token of the clause that contains the token at `first`."""
    for index in range(first - 1, -1, -1):
        token = tokens[index]
        if token in _HARD_BREAKS or (token in _SOFT_BREAKS and _starts_assertion(tokens, index + 1)):
            return index + 1
    return 0


def _clause_end(tokens: Sequence[str], last: int) -> int:
    """One past the last token of the clause that contains the token at `last`."""
    for index in range(last + 1, len(tokens)):
        token = tokens[index]
        if token in _HARD_BREAKS or (token in _SOFT_BREAKS and _starts_assertion(tokens, index + 1)):
            return index
    return len(tokens)


def _find_pre_cue(
    tokens: Sequence[str],
    clause_start: int,
    first: int,
    cues: Iterable[tuple[tuple[str, ...], int]],
    *,
    stop_at_verbs: bool,
    pseudo: bool = False,
) -> str | None:
    """The nearest cue before the mention (tokens[first]) within its clause, or None.

    A cue counts when at most its gap of tokens lies between it and the mention, and (for negation) no verb.
    """
    best: tuple[int, str] | None = None
    for words, gap in cues:
        size = len(words)
        for start in range(clause_start, first - size + 1):
            if tuple(tokens[start : start + size]) != words:
                continue
            between = tokens[start + size : first]
            if len(between) > gap:
                continue
            if stop_at_verbs and any(token in _VERBS for token in between):
                continue
            if words[-1] in ("normal", "unremarkable", "top-normal") and any(
                t in ("and", "or", ",") for t in between
            ):
                continue
            if pseudo and words[-1] in ("no", "not", "without", "nor") and _is_pseudo(tokens, start + size):
                continue
            if best is None or start > best[0]:
                best = (start, " ".join(words))
    return None if best is None else best[1]


def _is_pseudo(tokens: Sequence[str], position: int) -> bool:
    return any(tuple(tokens[position : position + len(words)]) == words for words in _PSEUDO_NEGATIONS)


def _in_or_coordination(tokens: Sequence[str], clause: tuple[int, int], first: int, last: int) -> bool:
    """Whether the mention is one side of "X or Y": an "or" within four words, with no verb in between."""
    start, end = clause
    windows = (tokens[last + 1 : min(end, last + 5)], tokens[max(start, first - 4) : first][::-1])
    for window in windows:
        for token in window:
            if token == "or":
                return True
            if token in _VERBS or token in _HARD_BREAKS:
                break
    return False


class CheXpertLabeler:
    """Labels reports with the 14 CheXpert observations (see the module docstring for the method)."""

    def __init__(
        self, phrases_dir: str | pathlib.Path | None = None, *, extra_unmentions: bool = True
    ) -> None:
        """Read the phrase lists from `phrases_dir` (default: `default_phrases_dir()`)."""
        self.phrases = load_phrases(phrases_dir)
        generated = _generated_unmentions(self.phrases, extra_unmentions)
        self._mention = {name: sorted(set(phrases)) for name, phrases in self.phrases.mention.items()}
        self._mention["other finding"] = sorted(set(self.phrases.other_findings))
        self._unmention = {
            name: sorted(set(self.phrases.unmention.get(name, ()) + generated.get(name, ())))
            for name in OBSERVATIONS
        }

    def mentions(self, report: str) -> list[Mention]:
        """Every mention in the report with its value and the rule that decided it."""
        found: list[Mention] = []
        for sentence in split_sentences(clean_report(report)):
            found.extend(self._sentence_mentions(sentence))
        return found

    def label(self, report: str) -> dict[str, int]:
        """The report's labels: observation -> 1 / 0 / -1 for each mentioned observation, in CheXpert order,
        with ``"No Finding": 1`` when no observation other than Support Devices is positive or uncertain."""
        values: dict[str, list[int]] = {}
        for mention in self.mentions(report):
            values.setdefault(mention.observation, []).append(mention.value)
            if (
                mention.observation == "Edema"
                and mention.phrase.strip() in _HEART_FAILURE
                and mention.value != 0
            ):
                values.setdefault("Cardiomegaly", []).append(UNCERTAIN)
        labels = {name: _aggregate(values[name]) for name in OBSERVATIONS if name in values}
        findings = [labels.get(name) for name in OBSERVATIONS if name not in (NO_FINDING, "Support Devices")]
        others = values.get("other finding", [])
        if all(value not in (POSITIVE, UNCERTAIN) for value in [*findings, *others]):
            labels[NO_FINDING] = POSITIVE
        return {name: labels[name] for name in OBSERVATIONS if name in labels}

    def label_many(self, reports: Iterable[str]) -> list[dict[str, int]]:
        """`label` for each report."""
        return [self.label(report) for report in reports]

    def _sentence_mentions(self, sentence: str) -> list[Mention]:
        masked = (
            " " + _MATCH_MASK.sub(" ", sentence) + " "
        )  # pad so phrases with edge spaces match at the ends
        tokens, starts, ends = _tokens(sentence)
        found = []
        for observation, phrases in self._mention.items():
            blocked = list(_find_all(masked, self._unmention.get(observation, ())))
            for phrase, start, end in _find_all(masked, phrases):
                if any(start < b_end and b_start < end for _, b_start, b_end in blocked):
                    continue
                # Back to sentence coordinates (the padding added one character), then to whole tokens.
                span_start = max(0, start - 1 + (len(phrase) - len(phrase.lstrip())))
                span_end = min(len(sentence), end - 1 - (len(phrase) - len(phrase.rstrip())))
                covered = [i for i in range(len(tokens)) if starts[i] < span_end and span_start < ends[i]]
                if not covered:
                    continue
                value, rule = self._classify(observation, phrase.strip(), tokens, covered[0], covered[-1])
                found.append(Mention(observation, phrase, sentence, span_start, span_end, value, rule))
        return found

    def _classify(
        self, observation: str, phrase: str, tokens: list[str], first: int, last: int
    ) -> tuple[int, str]:
        clause = (_clause_start(tokens, first), _clause_end(tokens, last))
        after = " ".join(tokens[last + 1 : clause[1]]) + " "
        # 1. pre-negation uncertainty
        cue = _find_pre_cue(tokens, clause[0], first, _PRE_NEG_UNCERTAIN_CUES, stop_at_verbs=False)
        if cue is not None:
            return UNCERTAIN, f"pre-negation uncertainty: {cue}"
        if _POST_PRE_NEG_UNCERTAIN.match(after):
            return UNCERTAIN, "pre-negation uncertainty: not excluded"
        # 2. negation
        cue = _find_pre_cue(tokens, clause[0], first, _NEGATION_CUES, stop_at_verbs=True, pseudo=True)
        if cue is not None:
            return NEGATIVE, f"negation: {cue}"
        if _POST_NEGATION.match(after):
            return NEGATIVE, "negation: after the mention"
        # 3. post-negation uncertainty
        if phrase in _ALWAYS_UNCERTAIN.get(observation, ()):
            return UNCERTAIN, f"uncertainty: {phrase!r} is always uncertain"
        if tokens[last] in _CONTOUR_HEADS and observation in ("Cardiomegaly", "Enlarged Cardiomediastinum"):
            before = tokens[max(clause[0], first - 3) : first]
            if any(token in _PRE_STABLE_WORDS for token in before) or _POST_STABLE.match(after):
                return UNCERTAIN, "uncertainty: stable heart size or contour"
            if _find_pre_cue(tokens, clause[0], first, [(("no", "change", "in"), 2)], stop_at_verbs=True):
                return UNCERTAIN, "uncertainty: stable heart size or contour"
        cue = _find_pre_cue(tokens, clause[0], first, _UNCERTAINTY_CUES, stop_at_verbs=False)
        if cue is not None:
            return UNCERTAIN, f"uncertainty: {cue}"
        if _POST_UNCERTAINTY.match(after):
            return UNCERTAIN, "uncertainty: after the mention"
        if _in_or_coordination(tokens, clause, first, last):
            return UNCERTAIN, "uncertainty: X or Y"
        return POSITIVE, "positive"


def _find_all(text: str, phrases: Iterable[str]) -> Iterable[tuple[str, int, int]]:
    """Every (phrase, start, end) occurrence of the phrases in `text`, overlapping ones included."""
    for phrase in phrases:
        start = text.find(phrase)
        while start != -1:
            yield phrase, start, start + len(phrase)
            start = text.find(phrase, start + 1)


def _aggregate(values: Sequence[int]) -> int:
    """CheXpert's rule for several mentions of one observation in a report."""
    if POSITIVE in values:
        return POSITIVE
    if NEGATIVE in values and UNCERTAIN in values:
        return UNCERTAIN
    return values[0]
