"""Tokenizer tests: spec §2 (vocabulary), §9 (tokenization, test vectors §9.5), DESIGN decision 4.

The ofa backend is checked against the spec's test vectors and against an independent GPT-2 byte-level BPE
written here from the algorithm (regex pre-tokenisation, byte -> unicode table, merges by rank) plus a
plain reading of dict.txt, and against the original demo's encode/decode rules re-stated here. The OFA files
are third-party data read from <repo>/../shared/data/ofa-bpe; those tests skip when the folder is absent.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from imtcxr_jax.text import tokenizer as tk
from imtcxr_jax.text.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    OfaTokenizer,
    TrainedTokenizer,
    load_tokenizer,
)

BPE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ofa-bpe"
requires_ofa = pytest.mark.skipif(
    not BPE_DIR.is_dir(),
    reason=f"OFA BPE files not found at {BPE_DIR} (third-party data, never in the repo; see shared/data/README.md)",
)

# Spec §9.5: (text, framing, model ids).
SPEC_VECTORS = [
    (" describe the image", "source", [0, 6190, 5, 2274, 2]),
    (" what disease does this image have?", "source", [0, 99, 2199, 473, 42, 2274, 33, 116, 2]),
    (
        "give the accurate bbox of cardiomegaly.",
        "source",
        [0, 26650, 5, 6030, 741, 8304, 9, 1886, 118, 4399, 571, 7776, 4, 2],
    ),
    (
        "please segment the heart from the given image.",
        "source",
        [0, 37111, 2835, 5, 1144, 31, 5, 576, 2274, 4, 2],
    ),
    ("where is atelectasis?", "source", [0, 8569, 16, 23, 6930, 17048, 116, 2]),
    (" is atelectasis in this image?", "source", [0, 16, 23, 6930, 17048, 11, 42, 2274, 116, 2]),
    (" yes, there is atelectasis.", "ids", [4420, 6, 89, 16, 23, 6930, 17048, 4]),
    (" atelectasis, pleural effusion", "ids", [23, 6930, 17048, 6, 16415, 9799, 22089, 15727]),
    (" no finding", "ids", [117, 2609]),
    (" right", "ids", [235]),
    (" yes", "ids", [4420]),
    (" no", "ids", [117]),
    ("<bin_0>", "ids", [58457]),
    ("<bin_500>", "ids", [58957]),
    ("<bin_999>", "ids", [59456]),
]

# Strings that stress the GPT-2 pre-tokeniser: digits, punctuation, contractions, unicode, whitespace runs.
EXTRA_STRINGS = [
    "I'm sure it's 12.5cm, isn't it? They'll've said we'd",
    "'S 'T 'RE don'T O'Neil's",
    "CTR 0.62 — café naïve 37°C ± 2 😀 🫁 ",
    "  multiple   spaces  and\ttabs\t",
    "line one\nline two\r\n\nline four\n",
    "x\u00a0y \u3000z \x1c a\x85b \u2028 \u200b",
    "日本語テキスト ÀÉÎ e\u0301 ﬁ ² ½ Ⅻ ٣٤",
    "1234567890 12,345.67 1e-5 -3 +4 50%",
    "<|endoftext|> <s> <pad> </s> <unk> <mask> <bin x<bin_1>",
    "",
    " ",
    "\n",
]

# Report-style sentences for the trained backend (written here; no real data).
_FINDINGS = [
    "cardiomegaly",
    "pleural effusion",
    "atelectasis",
    "pneumothorax",
    "consolidation",
    "edema",
    "nodule",
]
_SIDES = ["left", "right", "bilateral"]
_ZONES = ["upper", "middle", "lower", "apical"]
_SEVERITY = ["mild", "moderate", "severe", "small", "large"]


def _corpus() -> list[str]:
    texts = []
    for i, finding in enumerate(_FINDINGS):
        for j, side in enumerate(_SIDES):
            for k, zone in enumerate(_ZONES):
                severity = _SEVERITY[(i + j + k) % len(_SEVERITY)]
                texts.append(f"There is a {severity} {side} {zone} zone {finding}.")
                texts.append(f"No evidence of {finding} in the {side} {zone} lung. The heart size is normal.")
                texts.append(f"Findings: {severity} {finding}, {side} side; CTR 0.{50 + i + j + k}.")
    texts += [
        "The lungs are clear.",
        "No acute cardiopulmonary process.",
        "Heart size is mildly enlarged.",
    ] * 5
    return texts


# ------------------------------------------------------------------------------------------------------------
# independent references


class ReferenceGpt2Bpe:
    """GPT-2 byte-level BPE from the algorithm, plus fairseq's dict.txt lookup (spec §2, §9.1)."""

    PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

    def __init__(self, folder: Path) -> None:
        regex = pytest.importorskip(
            "regex", reason="the reference GPT-2 pre-tokeniser needs the regex package"
        )
        self.pattern = regex.compile(self.PATTERN)
        self.encoder = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
        self.decoder = {v: k for k, v in self.encoder.items()}
        merges = (folder / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
        self.ranks = {tuple(line.split(" ")): rank for rank, line in enumerate(m for m in merges if m)}
        lines = (folder / "dict.txt").read_text(encoding="utf-8").splitlines()
        self.symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [line.split(" ")[0] for line in lines]
        self.first_code = len(self.symbols) + 1  # after <mask>
        self.first_bin = self.first_code + 8192
        extras = ["<mask>", *(f"<code_{k}>" for k in range(8192)), *(f"<bin_{k}>" for k in range(1000))]
        self.index = {symbol: i for i, symbol in enumerate(self.symbols + extras)}
        # byte -> character: printable Latin-1 bytes stand for themselves, the rest take 256, 257, … in order
        printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
        others = [b for b in range(256) if b not in printable]
        self.byte_char = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
        self.char_byte = {c: b for b, c in self.byte_char.items()}

    def _merge(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            ranked = [(self.ranks.get(pair, float("inf")), pair) for pair in itertools.pairwise(parts)]
            rank, best = min(ranked, key=lambda item: item[0])
            if rank == float("inf"):
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def bpe_ids(self, text: str) -> list[int]:
        ids = []
        for piece in self.pattern.findall(text):
            word = "".join(self.byte_char[b] for b in piece.encode("utf-8"))
            ids += [self.encoder[token] for token in self._merge(word)]
        return ids

    def model_ids(self, text: str) -> list[int]:
        """The dataset path: BPE ids as a space-separated string, then Dictionary.encode_line."""
        line = " ".join(str(i) for i in self.bpe_ids(text))
        return [self.index.get(symbol, UNK_ID) for symbol in line.split()]

    def demo_encode(self, text: str) -> list[int]:
        """demo_base.encode_text: strip, split, BPE " " + word unless it is a <bin_/<code_ word, encode_line."""
        words = [
            w if w.startswith(("<bin_", "<code_")) else " ".join(str(i) for i in self.bpe_ids(" " + w))
            for w in text.strip().split()
        ]
        return [self.index.get(symbol, UNK_ID) for symbol in " ".join(words).split()]

    def demo_decode(self, ids: list[int]) -> tuple[str, str]:
        """demo_base.decode_fn: text words (each piece decoded on its own) and bin words, separately."""
        words: list[str] = []
        bins: list[str] = []
        for i in ids:
            if i in (BOS_ID, EOS_ID, PAD_ID):
                continue
            if i >= self.first_bin:
                bins.append(f"<bin_{i - self.first_bin}>")
                continue
            if i >= self.first_code:  # <code_k>, collected apart like the bins
                continue
            raw = bytes(self.char_byte[c] for c in self.decoder[int(self.symbols[i])])
            piece = raw.decode("utf-8", errors="replace")
            if piece.startswith(" ") or not words:
                words.append(piece.strip())
            else:
                words[-1] += piece
        return " ".join(words), " ".join(bins)


def _random_strings(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = [chr(c) for c in [*range(0x20, 0x7F), *range(0xA0, 0x180)]]
    alphabet += [
        "\n",
        "\t",
        " ",
        " ",
        " ",
        "😀",
        "中",
        "°",
        "é",
        "\u0301",
        "\u3000",
        "'s",
        "'ll",
        " <bin_3> ",
    ]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(count)]


# ------------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def ofa() -> OfaTokenizer:
    if not BPE_DIR.is_dir():
        pytest.skip(f"OFA BPE files not found at {BPE_DIR}")
    return OfaTokenizer(BPE_DIR)


@pytest.fixture(scope="module")
def reference() -> ReferenceGpt2Bpe:
    if not BPE_DIR.is_dir():
        pytest.skip(f"OFA BPE files not found at {BPE_DIR}")
    return ReferenceGpt2Bpe(BPE_DIR)


@pytest.fixture(scope="module")
def trained() -> TrainedTokenizer:
    return TrainedTokenizer.train(_corpus(), vocab_size=1500, min_frequency=2)


# ------------------------------------------------------------------------------------------------------------
# ofa backend: vocabulary and test vectors


@requires_ofa
@pytest.mark.parametrize(("text", "framing", "expected"), SPEC_VECTORS)
def test_spec_test_vectors(ofa: OfaTokenizer, text: str, framing: str, expected: list[int]) -> None:
    ids = ofa.encode_source(text) if framing == "source" else ofa.encode(text)
    assert ids == expected


@requires_ofa
def test_ofa_vocabulary_layout(ofa: OfaTokenizer) -> None:
    assert ofa.vocab_size == 59457
    assert (ofa.mask_id, ofa.first_code_id, ofa.first_bin_id) == (50264, 50265, 58457)
    assert [ofa.id_to_token(i) for i in range(7)] == ["<s>", "<pad>", "</s>", "<unk>", ".", "Ġthe", ","]
    assert [ofa.id_to_token(i) for i in (50261, 50263, 50264, 50265, 58456)] == [
        "madeupword0000",
        "madeupword0002",
        "<mask>",
        "<code_0>",
        "<code_8191>",
    ]
    assert [ofa.bin_token_id(k) for k in (0, 500, 999)] == [58457, 58957, 59456]
    assert [ofa.bin_index(i) for i in (58457, 58957, 59456, 58456, 5)] == [0, 500, 999, None, None]
    assert ofa.is_bin(59456) and not ofa.is_bin(50264)
    assert ofa.encode("<code_0> <code_8191>") == [50265, 58456]
    # spec §9.1: leading-space sensitivity
    assert ofa.encode(" give") == [492] and ofa.encode("give") == [26650]
    description = ofa.describe()
    assert description["backend"] == "ofa" and description["vocab_size"] == 59457
    assert (description["bos_id"], description["pad_id"], description["eos_id"], description["unk_id"]) == (
        0,
        1,
        2,
        3,
    )
    assert (
        description["sha256"]["dict.txt"]
        == "2c31c5b236661067fe8626775eb995ef5fe808ac87d2ad4a6ddbef68550f5cc6"
    )


@requires_ofa
def test_ofa_framing(ofa: OfaTokenizer) -> None:
    assert ofa.encode_target(" no finding") == [117, 2609, EOS_ID]
    assert ofa.encode_source("<bin_1> <bin_2>") == [BOS_ID, 58458, 58459, EOS_ID]


@requires_ofa
def test_ofa_matches_reference_bpe(ofa: OfaTokenizer, reference: ReferenceGpt2Bpe) -> None:
    strings = [text for text, _, _ in SPEC_VECTORS if "<bin_" not in text] + EXTRA_STRINGS
    strings += [s for s in _random_strings(400, seed=0) if "<bin_" not in s]
    for text in strings:
        assert ofa.encode(text) == reference.model_ids(text), repr(text)


# ------------------------------------------------------------------------------------------------------------
# ofa backend: words mixed with literal bins, decoding


MIXED = [
    "give the accurate bbox of cardiomegaly. <bin_12> <bin_873> <bin_40> <bin_999>",
    "<bin_0> <bin_1> left lung <bin_2> <bin_3>",
    "region <bin_5> <bin_6> <bin_7> <bin_8> what is it? <code_17> done",
    "<bin_100>",
    "a <bin_1> b <bin_2> c",
]


@requires_ofa
@pytest.mark.parametrize("text", MIXED)
def test_ofa_mixed_text_and_bins_match_demo(
    ofa: OfaTokenizer, reference: ReferenceGpt2Bpe, text: str
) -> None:
    # The demo BPE-encodes every word as " " + word and looks up <bin_/<code_ words: with a leading space
    # our encoder gives the same ids for normalised text (module docstring).
    assert ofa.encode(" " + text) == reference.demo_encode(text)
    # Whitespace before a literal word, or between the last one and the end, is a separator: no token.
    spaced = " " + text.replace(" <", " \t <") + (" \n" if text.endswith(">") else "")
    assert ofa.encode(spaced) == reference.demo_encode(text)


@requires_ofa
def test_ofa_literal_bins_in_text(ofa: OfaTokenizer) -> None:
    assert ofa.encode("<bin_1> <bin_2>") == [58458, 58459]  # spec §9.1: no BPE, dictionary lookup
    assert ofa.encode(" the box <bin_1>") == [*ofa.encode(" the box"), 58458]
    assert ofa.encode("<bin_1> left") == [58458, *ofa.encode(" left")]  # the space goes with the next word
    assert ofa.encode("<bin_1>\nleft") == [58458, *ofa.encode("\nleft")]
    # `<bin_k>` is literal only as a whole whitespace-delimited word; otherwise it is plain text
    for text in ("x<bin_1>", "(<bin_1>)"):
        ids = ofa.encode(text)
        assert not any(ofa.is_bin(i) for i in ids) and ofa.decode(ids) == text


@requires_ofa
def test_ofa_decode(ofa: OfaTokenizer, reference: ReferenceGpt2Bpe) -> None:
    for text, framing, ids in SPEC_VECTORS:
        if framing == "source" or "<bin_" not in text:
            assert ofa.decode(ids) == text.strip()
    assert ofa.decode([0, 58457, 58957, 59456, 2, 1, 1]) == "<bin_0> <bin_500> <bin_999>"
    assert ofa.decode([BOS_ID, UNK_ID, 50264, 50265, 50261]) == "<unk> <mask> <code_0> madeupword0000"
    normalised = [
        "the heart is normal.",
        "CTR 0.62, café 😀 ±3 °C",
        "don't   stop",
        "left <bin_4> <bin_5> right",
    ]
    for text in normalised + [t.strip() for t in MIXED]:
        assert ofa.decode(ofa.encode(" " + text)) == text
        assert ofa.decode(ofa.encode(text)) == text
    # Same words as the demo's decode_fn for ASCII text; bins are interleaved instead of returned apart.
    for text in [*MIXED, " yes, there is atelectasis. the heart is enlarged!", "it's 1.5 cm"]:
        ids = ofa.encode(" " + text)
        demo_text, demo_bins = reference.demo_decode(ids)
        words = ofa.decode(ids).split(" ")
        assert " ".join(w for w in words if not w.startswith(("<bin_", "<code_"))) == demo_text
        assert " ".join(w for w in words if w.startswith("<bin_")) == demo_bins
    # A character split over several BPE pieces survives (the demo would print U+FFFD per piece).
    assert len(ofa.encode(" 🫁")) > 1 and ofa.decode(ofa.encode(" 🫁")) == "🫁"


# ------------------------------------------------------------------------------------------------------------
# bad input


@requires_ofa
@pytest.mark.parametrize("bad", [59457, -1, 10**9])
def test_ofa_bad_ids(ofa: OfaTokenizer, bad: int) -> None:
    with pytest.raises(ValueError, match=rf"ids\[1\]: id {bad} .*0\.\.59456"):
        ofa.decode([5, bad])
    with pytest.raises(ValueError, match=rf"token_id: id {bad} .*0\.\.59456"):
        ofa.id_to_token(bad)
    with pytest.raises(ValueError, match=rf"token_id: id {bad}"):
        ofa.bin_index(bad)
    with pytest.raises(TypeError, match=r"ids\[0\]"):
        ofa.decode([1.5])


@requires_ofa
@pytest.mark.parametrize("word", ["<bin_1000>", "<bin_-1>", "<bin_01>", "<bin_5>,", "<bin_>", "<code_8192>"])
def test_ofa_bad_literal_words(ofa: OfaTokenizer, word: str) -> None:
    with pytest.raises(ValueError, match=f"token '{word}'"):
        ofa.encode(f" the box {word} ok")
    with pytest.raises(ValueError, match="bin index k: got 1000"):
        ofa.bin_token_id(1000)


def _ofa_copy(folder: Path, **replace: bytes) -> Path:
    """The OFA files linked into `folder` (not copied into the repo), some replaced by `replace`."""
    folder.mkdir(exist_ok=True)
    for name in tk.OFA_FILES:
        target = folder / name
        key = name.replace(".", "_")
        if key in replace:
            target.write_bytes(replace[key])
        else:
            target.symlink_to(BPE_DIR / name)
    return folder


@requires_ofa
def test_ofa_missing_or_malformed_files(tmp_path: Path) -> None:
    folder = _ofa_copy(tmp_path / "missing")
    (folder / "vocab.bpe").unlink()
    with pytest.raises(FileNotFoundError, match=r"vocab\.bpe: file not found"):
        OfaTokenizer(folder)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        OfaTokenizer(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"encoder\.json: not a valid JSON"):
        OfaTokenizer(_ofa_copy(tmp_path / "enc", encoder_json=b"{not json"))
    with pytest.raises(ValueError, match=r"vocab\.bpe: line 3: expected two tokens"):
        OfaTokenizer(_ofa_copy(tmp_path / "merges", vocab_bpe="#version: 0.2\nĠ t\nĠ a b\n".encode()))
    with pytest.raises(ValueError, match=r"dict\.txt: line 2: expected '<symbol> <count>'"):
        OfaTokenizer(_ofa_copy(tmp_path / "dict", dict_txt=b"13 5\n262\n"))
    with pytest.raises(ValueError, match=r"dict\.txt: line 2: duplicate symbol '13'"):
        OfaTokenizer(_ofa_copy(tmp_path / "dup", dict_txt=b"13 5\n13 4\n"))


@requires_ofa
def test_ofa_save_and_load(ofa: OfaTokenizer, tmp_path: Path) -> None:
    saved = ofa.save(tmp_path / "ofa.json")
    assert saved.stat().st_size < 2000  # a reference to the folder, never a copy of the OFA files
    for tok in (load_tokenizer(saved), load_tokenizer(BPE_DIR)):
        assert isinstance(tok, OfaTokenizer) and tok.vocab_size == 59457
        assert tok.encode(" describe the image <bin_3>") == ofa.encode(" describe the image <bin_3>")
    # a different dict.txt than the one recorded is refused
    other = _ofa_copy(tmp_path / "other", dict_txt=(BPE_DIR / "dict.txt").read_bytes() + b"extra 0\n")
    with pytest.raises(ValueError, match=r"dict\.txt has SHA-256"):
        load_tokenizer(saved, bpe_dir=other)


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.json"):
        load_tokenizer(tmp_path / "nothing.json")
    with pytest.raises(FileNotFoundError, match="OFA BPE folder"):
        load_tokenizer(tmp_path)
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(ValueError, match=r"bad\.json: not a JSON tokenizer file"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"model": {}}')
    with pytest.raises(ValueError, match=r"other\.json: not an imtcxr-tokenizer file"):
        load_tokenizer(tmp_path / "other.json")


# ------------------------------------------------------------------------------------------------------------
# trained backend


def test_trained_layout(trained: TrainedTokenizer) -> None:
    assert [trained.id_to_token(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert trained.vocab_size <= 1500 and trained.vocab_size == trained.bpe_vocab_size + 1000
    first = trained.vocab_size - 1000
    assert [trained.bin_token_id(k) for k in (0, 999)] == [first, trained.vocab_size - 1]
    assert trained.encode("<bin_0> <bin_999>") == [first, trained.vocab_size - 1]
    assert trained.id_to_token(trained.vocab_size - 1) == "<bin_999>"
    assert trained.bin_index(first + 7) == 7 and trained.bin_index(first - 1) is None
    ids = trained.encode(" pleural effusion 😀 unseenword 日本 <s> <pad>")
    assert ids and all(4 <= i < first for i in ids)  # text never yields specials, <unk> or bins
    # learned merges: frequent words are single tokens, and leading spaces matter as in GPT-2
    assert len(trained.encode(" effusion")) == 1
    assert trained.encode(" heart") != trained.encode("heart")
    assert trained.describe()["backend"] == "trained"


def test_trained_is_deterministic(trained: TrainedTokenizer, tmp_path: Path) -> None:
    again = TrainedTokenizer.train(_corpus(), vocab_size=1500, min_frequency=2)
    first, second = trained.save(tmp_path / "a.json"), again.save(tmp_path / "b.json")
    assert first.read_bytes() == second.read_bytes()


def test_trained_save_load_round_trip(trained: TrainedTokenizer, tmp_path: Path) -> None:
    path = trained.save(tmp_path / "sub" / "tok.json")
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["format"] == "imtcxr-tokenizer" and document["backend"] == "trained"
    assert document["tokenizer"]["model"]["type"] == "BPE"
    loaded = load_tokenizer(path)
    assert isinstance(loaded, TrainedTokenizer) and loaded.vocab_size == trained.vocab_size
    assert loaded.save(tmp_path / "again.json").read_bytes() == path.read_bytes()
    for text in _corpus()[:20] + EXTRA_STRINGS:
        assert loaded.encode(text) == trained.encode(text)


def test_trained_encode_decode_round_trip(trained: TrainedTokenizer) -> None:
    texts = [
        *_corpus(),
        "unseen hyperlucency of the retrocardiac region",
        "café 😀 🫁 37°C ± 2 日本語 e\u0301",
    ]
    texts += ["'S don't O'Neil's", "<code_5> stays text", "left <bin_4> <bin_5> right", "a  b"]
    texts += [" ".join(s.split()) for s in _random_strings(300, seed=1)]
    for text in texts:
        ids = trained.encode(text)
        assert trained.decode(ids) == text, repr(text)
        assert trained.decode([BOS_ID, *trained.encode(" " + text), EOS_ID, PAD_ID]) == text
    assert trained.encode_source("x") == [BOS_ID, *trained.encode("x"), EOS_ID]
    assert trained.encode_target("x") == [*trained.encode("x"), EOS_ID]


def test_trained_bad_input(trained: TrainedTokenizer, tmp_path: Path) -> None:
    v = trained.vocab_size
    with pytest.raises(ValueError, match=rf"ids\[0\]: id {v} .*0\.\.{v - 1}"):
        trained.decode([v])
    with pytest.raises(ValueError, match=r"token '<bin_1000>'"):
        trained.encode("<bin_1000>")
    with pytest.raises(ValueError, match="vocab_size: got 1000"):
        TrainedTokenizer.train(["a b"], vocab_size=1000)
    document = trained.to_document()
    document["vocab_size"] += 1
    (tmp_path / "t.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"t\.json: field 'vocab_size'"):
        load_tokenizer(tmp_path / "t.json")


# ------------------------------------------------------------------------------------------------------------
# command line


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "reports.txt"
    corpus.write_text("\n".join(_corpus()) + "\n\n", encoding="utf-8")
    out = tmp_path / "tok.json"
    assert tk.cli_main(["train", "--corpus", str(corpus), "--vocab-size", "1400", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["texts"] == len(_corpus()) and out.is_file()

    assert tk.cli_main(["encode", "--tokenizer", str(out), "--framing", "source", " the heart <bin_3>"]) == 0
    lines = capsys.readouterr().out.splitlines()
    tok = load_tokenizer(out)
    assert json.loads(lines[0]) == tok.encode_source(" the heart <bin_3>") and lines[1] == "the heart <bin_3>"

    assert tk.cli_main(["info", "--tokenizer", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["vocab_size"] == tok.vocab_size

    assert tk.cli_main(["info", "--tokenizer", str(tmp_path / "missing.json")]) == 1
    assert "missing.json" in capsys.readouterr().err


@requires_ofa
def test_cli_ofa(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        tk.cli_main(["encode", "--tokenizer", str(BPE_DIR), "--framing", "source", " describe the image"])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0]) == [0, 6190, 5, 2274, 2] and lines[1] == "describe the image"
    assert tk.cli_main(["info", "--tokenizer", str(BPE_DIR)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["vocab_size"] == 59457
