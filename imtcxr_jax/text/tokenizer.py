"""Text <-> ids: one interface, two backends (DESIGN decision 4; spec §2 and §9).

* ``ofa``: GPT-2 byte-level BPE (``encoder.json`` + ``vocab.bpe``) followed by the fairseq dictionary
  ``dict.txt``, giving exactly the model ids of OFA / IMT-CXR checkpoints (spec §2: V = 59,457).
* ``trained``: a byte-level BPE trained with the ``tokenizers`` package on a text corpus, for machines without
  the OFA files. It is stored as one JSON file (see `TrainedTokenizer`).

Both backends put the specials ``<s> <pad> </s> <unk>`` at ids 0..3 and the 1,000 location tokens
``<bin_0> … <bin_999>`` LAST, so ``bin = id - vocab_size + num_bins`` (spec §2) holds for either.

Encoding (spec §9.1, §9.2). Text is BPE-encoded as given, with no lower-casing, no whitespace normalisation
and no BOS/EOS: it is case- and leading-space-sensitive like GPT-2 (``" give"`` → 492, ``"give"`` → 26650).
Whitespace-separated words of the form ``<bin_k>`` (and ``<code_k>`` for ``ofa``) are looked up literally,
never BPE-encoded, as the original does for location targets and the demo for instructions. The whitespace
*before* a literal word, and whitespace that only separates a literal word from the end of the text, is a
separator and produces no token; whitespace *after* a literal word stays with the following text, where it
is the next word's leading space (GPT-2 attaches a space to the word after it). Hence for text in the
normalised form the original feeds its encoder (single spaces, no trailing space):

* a pure bin string ``"<bin_1> <bin_2>"`` gives the dictionary lookup of each word (the dataset's
  ``use_bpe=False`` path), and
* ``encode(" " + t)`` equals the demo's ``encode_text(t)`` (every word BPE-encoded as ``" " + word``,
  literal words kept) for any mix of words and bins, because the GPT-2 pre-tokeniser never joins pieces
  across a single space.

A whitespace-separated word that starts with ``<bin_`` (or ``<code_`` for ``ofa``) but is not a valid token
(index out of range, leading zeros, trailing punctuation…) raises ``ValueError``: the original would map it
silently to ``<unk>``.

Decoding (spec §9.4). BOS, EOS and PAD are dropped; bins (and codes, ``<unk>``, ``<mask>``, ``madeupword…``)
become words of their own, rendered by their symbol; every other piece opens a new word when it starts with a
space (or follows a symbol, or is the first piece) and is otherwise glued to the previous word; words are
stripped and joined with single spaces. One deliberate difference from the demo: the bytes of all pieces of a
word are joined *before* UTF-8 decoding (with replacement), so a character whose bytes span several BPE
pieces (most emoji, many CJK characters) decodes correctly instead of turning into U+FFFD per piece. For
ASCII text the result is identical to the demo's.

Command line: ``imtcxr tokenizer {train,encode,info} ...`` (`cli_main`).
"""

from __future__ import annotations

import abc
import argparse
import hashlib
import json
import operator
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

# Specials shared by both backends, in the order of fairseq's Dictionary (spec §2).
BOS_ID = 0
PAD_ID = 1
EOS_ID = 2
UNK_ID = 3
SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>")
NUM_BINS = 1000  # location bins, spec §2 / §10
NUM_CODES = 8192  # image-generation codes of the ofa vocabulary (unused by IMT-CXR, but they hold ids)

# The on-disk format written by `Tokenizer.save` (a single JSON document, for both backends).
FILE_FORMAT = "imtcxr-tokenizer"
FILE_FORMAT_VERSION = 1
OFA_FILES = ("encoder.json", "vocab.bpe", "dict.txt")

# A literal token word: `<kind_k>` with k a canonical decimal (no sign, no leading zeros), spec §9.1 item 3.
_LITERAL_FULL = re.compile(r"<(bin|code)_(0|[1-9][0-9]*)>")
_FAIRSEQ_OVERWRITE = "#fairseq:overwrite"


def _gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (used in encoder.json and vocab.bpe).

    Bytes that are printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other
    68 bytes are mapped, in increasing byte order, to the characters U+0100, U+0101, … so that no BPE token
    contains whitespace or control characters (e.g. the space byte is 'Ġ' = U+0120).
    """
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    table: dict[int, str] = {}
    shifted = 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


_BYTE_TO_UNICODE = _gpt2_byte_to_unicode()
_UNICODE_TO_BYTE = {char: byte for byte, char in _BYTE_TO_UNICODE.items()}


def _token_bytes(token: str) -> bytes | None:
    """The bytes a byte-level BPE token stands for, or None when it is not a byte-level string."""
    try:
        return bytes(_UNICODE_TO_BYTE[char] for char in token)
    except KeyError:
        return None


def _byte_level_bpe_tokenizer(model: models.BPE) -> tokenizers.Tokenizer:
    """Wrap a BPE model with GPT-2's pre-tokenisation: its regex split, bytes -> characters, no prefix space."""
    tok = tokenizers.Tokenizer(model)
    # use_regex=True is GPT-2's pattern ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+);
    # the tests check the result against a from-the-algorithm implementation on thousands of strings.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _check_id(value: Any, argument: str, vocab_size: int) -> int:
    """`value` as an int in [0, vocab_size), or an error naming the argument, the value and the range."""
    try:
        token_id = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{argument}: got {value!r} ({type(value).__name__}), expected an integer id"
        ) from None
    if not 0 <= token_id < vocab_size:
        raise ValueError(
            f"{argument}: id {token_id} is outside the vocabulary, valid ids are 0..{vocab_size - 1}"
        )
    return token_id


def _literal_word_pattern(kinds: tuple[str, ...]) -> re.Pattern[str]:
    """A whitespace-delimited word that starts like a literal token; `_literal_id` checks its validity."""
    return re.compile(r"(?<!\S)<(?:" + "|".join(kinds) + r")_\S*")


def _split_literals(text: str, literal_word: re.Pattern[str]) -> Iterator[tuple[bool, str]]:
    """Split text into (is_literal, piece): literal words, and the text between them to be BPE-encoded.

    Whitespace before a literal word, and whitespace between the last literal word and the end of the text,
    is a separator and dropped; whitespace after a literal word is kept as the next word's leading space.
    """
    position = 0
    for match in literal_word.finditer(text):
        before = text[position : match.start()].rstrip()
        if before:
            yield False, before
        yield True, match.group()
        position = match.end()
    rest = text[position:]
    # With no literal word at all the text is encoded untouched, even if it is only whitespace.
    if rest and (position == 0 or not rest.isspace()):
        yield False, rest


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Tokenizer(abc.ABC):
    """Text <-> model ids (spec §9), common to both backends.

    Subclasses provide the vocabulary size, the BPE of plain text, the bytes of each BPE id and the id of each
    literal `<kind_k>` word; this class implements the literal-word handling, framing and decoding rules.
    """

    backend: ClassVar[str]
    # Kinds of `<kind_k>` words looked up literally, never BPE-encoded (spec §9.1 item 3).
    literal_kinds: ClassVar[tuple[str, ...]] = ("bin",)
    _literal_word: ClassVar[re.Pattern[str]] = _literal_word_pattern(literal_kinds)

    # ----------------------------------------------------------------------------------------------------
    # vocabulary

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of model ids V (the embedding rows): specials, BPE pieces, extras, then the bins."""

    @property
    def num_bins(self) -> int:
        """Number of `<bin_k>` location tokens (spec §2, §10)."""
        return NUM_BINS

    @property
    def first_bin_id(self) -> int:
        """Id of `<bin_0>`; the bins are the last `num_bins` ids."""
        return self.vocab_size - self.num_bins

    def bin_token_id(self, k: int) -> int:
        """Model id of `<bin_k>` = V - num_bins + k (spec §2); 58457 + k for ofa."""
        k = operator.index(k)
        if not 0 <= k < self.num_bins:
            raise ValueError(f"bin index k: got {k}, expected 0..{self.num_bins - 1}")
        return self.first_bin_id + k

    def bin_index(self, token_id: int) -> int | None:
        """k for the id of `<bin_k>` (t - V + num_bins, spec §2), None for any other valid id."""
        token_id = _check_id(token_id, "token_id", self.vocab_size)
        return token_id - self.first_bin_id if token_id >= self.first_bin_id else None

    def is_bin(self, token_id: int) -> bool:
        """Whether `token_id` is one of the `<bin_k>` tokens."""
        return self.bin_index(token_id) is not None

    @abc.abstractmethod
    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of an id: a special or literal symbol, or the byte-level BPE string ('Ġthe')."""

    # ----------------------------------------------------------------------------------------------------
    # text -> ids

    @abc.abstractmethod
    def _encode_bpe(self, text: str) -> list[int]:
        """Model ids of plain text (no literal words in it), byte-level BPE without any normalisation."""

    def _literal_id(self, word: str) -> int:
        """Model id of a literal `<kind_k>` word, or ValueError naming it (spec §9.1 item 3)."""
        match = _LITERAL_FULL.fullmatch(word)
        if match is None or match.group(1) not in self.literal_kinds:
            prefixes = " or ".join(f"<{kind}_" for kind in self.literal_kinds)
            forms = " or ".join(f"<{kind}_k>" for kind in self.literal_kinds)
            raise ValueError(
                f"token {word!r}: a word starting with {prefixes} must be exactly {forms}, "
                "k a decimal number without leading zeros"
            )
        kind, k = match.group(1), int(match.group(2))
        if kind == "bin":
            if k >= self.num_bins:
                raise ValueError(
                    f"token {word!r}: bin index {k} is out of range, valid bins are 0..{self.num_bins - 1}"
                )
            return self.first_bin_id + k
        return self._code_id(word, k)

    def _code_id(self, word: str, k: int) -> int:
        raise ValueError(f"token {word!r}: the {self.backend} tokenizer has no <code_k> tokens")

    def encode(self, text: str) -> list[int]:
        """Model ids of `text`, no BOS/EOS (spec §9.1); literal `<bin_k>` words map to their ids."""
        if not isinstance(text, str):
            raise TypeError(f"text: got {type(text).__name__}, expected str")
        ids: list[int] = []
        for is_literal, piece in _split_literals(text, self._literal_word):
            if is_literal:
                ids.append(self._literal_id(piece))
            else:
                ids.extend(self._encode_bpe(piece))
        return ids

    def encode_source(self, text: str) -> list[int]:
        """Encoder input: [BOS] + encode(text) + [EOS] (spec §9.3)."""
        return [BOS_ID, *self.encode(text), EOS_ID]

    def encode_target(self, text: str) -> list[int]:
        """Loss target: encode(text) + [EOS] (spec §9.3); the decoder input is [BOS] + encode(text)."""
        return [*self.encode(text), EOS_ID]

    # ----------------------------------------------------------------------------------------------------
    # ids -> text

    @abc.abstractmethod
    def _piece_bytes(self, token_id: int) -> bytes | None:
        """Bytes of a BPE piece, or None for an id rendered as a symbol word (bins, <unk>, …)."""

    def decode(self, ids: Iterable[int]) -> str:
        """Text of model ids (spec §9.4, with the byte-level gluing described in the module docstring)."""
        words: list[str] = []
        current: bytearray | None = None  # bytes of the text word being built
        for position, value in enumerate(ids):
            token_id = _check_id(value, f"ids[{position}]", self.vocab_size)
            if token_id in (BOS_ID, EOS_ID, PAD_ID):
                continue
            piece = self._piece_bytes(token_id)
            if piece is None:
                if current is not None:
                    words.append(current.decode("utf-8", errors="replace").strip())
                    current = None
                words.append(self.id_to_token(token_id))
            elif current is None or piece.startswith(b" "):
                if current is not None:
                    words.append(current.decode("utf-8", errors="replace").strip())
                current = bytearray(piece)
            else:
                current += piece
        if current is not None:
            words.append(current.decode("utf-8", errors="replace").strip())
        return " ".join(words)

    # ----------------------------------------------------------------------------------------------------
    # persistence and description

    @abc.abstractmethod
    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as one JSON file that `load_tokenizer` reads back; returns the path."""

    def describe(self) -> dict[str, Any]:
        """Backend, vocabulary size and the special ids, as a JSON-ready dict."""
        return {
            "backend": self.backend,
            "vocab_size": self.vocab_size,
            "num_bins": self.num_bins,
            "first_bin_id": self.first_bin_id,
            "bos_id": BOS_ID,
            "pad_id": PAD_ID,
            "eos_id": EOS_ID,
            "unk_id": UNK_ID,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return path.read_bytes()


class OfaTokenizer(Tokenizer):
    """The OFA / IMT-CXR vocabulary: GPT-2 BPE ids mapped through fairseq's `dict.txt` (spec §2, §9).

    Id layout: 0..3 specials, 4 + i for line i of dict.txt (GPT-2 ids as decimal strings, then three
    `madeupword` fillers), `<mask>`, 8,192 `<code_k>`, 1,000 `<bin_k>`: V = 59,457 with the stock files.
    """

    backend = "ofa"
    literal_kinds = ("bin", "code")
    _literal_word = _literal_word_pattern(literal_kinds)

    def __init__(self, bpe_dir: str | Path) -> None:
        self.bpe_dir = Path(bpe_dir).expanduser().resolve()
        if not self.bpe_dir.is_dir():
            raise FileNotFoundError(
                f"{self.bpe_dir}: OFA BPE folder not found (expected {', '.join(OFA_FILES)})"
            )
        raw = {name: _read_file(self.bpe_dir / name) for name in OFA_FILES}
        self.sha256 = {name: _sha256(data) for name, data in raw.items()}

        encoder = self._parse_encoder(self.bpe_dir / "encoder.json", raw["encoder.json"])
        merges = self._parse_merges(self.bpe_dir / "vocab.bpe", raw["vocab.bpe"], encoder)
        symbols, bpe_ids = self._parse_dict(self.bpe_dir / "dict.txt", raw["dict.txt"], encoder)

        self._bpe = _byte_level_bpe_tokenizer(models.BPE(vocab=encoder, merges=merges))
        # GPT-2 id -> model id; a GPT-2 id absent from dict.txt becomes <unk>, as fairseq's encode_line does.
        self._bpe_to_model = [UNK_ID] * len(encoder)
        for index, bpe_id in enumerate(bpe_ids):
            if bpe_id is not None:
                self._bpe_to_model[bpe_id] = 4 + index
        bpe_bytes = {bpe_id: _token_bytes(token) for token, bpe_id in encoder.items()}
        # model id -> bytes of its piece (None: a symbol word such as madeupword0000); ids 0..3 are specials.
        self._pieces: list[bytes | None] = [None] * 4 + [
            None if bpe_id is None else bpe_bytes[bpe_id] for bpe_id in bpe_ids
        ]
        self._symbols = list(SPECIAL_TOKENS) + symbols
        self._bpe_tokens = {bpe_id: token for token, bpe_id in encoder.items()}
        self._dict_bpe_ids = bpe_ids
        self.mask_id = 4 + len(symbols)
        self.first_code_id = self.mask_id + 1
        self.num_codes = NUM_CODES
        self._vocab_size = self.first_code_id + NUM_CODES + NUM_BINS

    @staticmethod
    def _parse_encoder(path: Path, data: bytes) -> dict[str, int]:
        try:
            encoder = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a valid JSON file ({error})") from None
        if not isinstance(encoder, dict) or not encoder:
            raise ValueError(f"{path}: expected a JSON object mapping BPE tokens to ids")
        ids = sorted(encoder.values()) if all(isinstance(v, int) for v in encoder.values()) else None
        if ids != list(range(len(encoder))):
            raise ValueError(f"{path}: ids must be the integers 0..{len(encoder) - 1}, each exactly once")
        for token in encoder:
            if _token_bytes(token) is None:
                raise ValueError(f"{path}: token {token!r} is not a GPT-2 byte-level string")
        return encoder

    @staticmethod
    def _parse_merges(path: Path, data: bytes, encoder: dict[str, int]) -> list[tuple[str, str]]:
        try:
            lines = data.decode("utf-8").split("\n")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 ({error})") from None
        merges: list[tuple[str, str]] = []
        for number, line in enumerate(lines, start=1):
            if not line or (number == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise ValueError(
                    f"{path}: line {number}: expected two tokens separated by one space, got {line!r}"
                )
            left, right = parts
            for token in (left, right, left + right):
                if token not in encoder:
                    raise ValueError(f"{path}: line {number}: token {token!r} is not in encoder.json")
            merges.append((left, right))
        if not merges:
            raise ValueError(f"{path}: no merges found")
        return merges

    @staticmethod
    def _parse_dict(path: Path, data: bytes, encoder: dict[str, int]) -> tuple[list[str], list[int | None]]:
        """fairseq `Dictionary.add_from_file`: one `symbol count [#fairseq:overwrite]` per line, order kept."""
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 ({error})") from None
        symbols: list[str] = []
        bpe_ids: list[int | None] = []
        seen: dict[str, int] = dict.fromkeys(SPECIAL_TOKENS, 0)
        for number, line in enumerate(lines, start=1):
            fields = line.rstrip().split(" ")
            overwrite = fields[-1] == _FAIRSEQ_OVERWRITE
            if overwrite:
                fields = fields[:-1]
            if len(fields) < 2 or not fields[-1].isdigit():
                raise ValueError(f"{path}: line {number}: expected '<symbol> <count>', got {line!r}")
            symbol = " ".join(fields[:-1])
            if symbol in seen and not overwrite:
                raise ValueError(
                    f"{path}: line {number}: duplicate symbol {symbol!r} (first on line {seen[symbol]})"
                )
            seen[symbol] = number
            if symbol.isdigit():
                bpe_id = int(symbol)
                if bpe_id >= len(encoder):
                    raise ValueError(f"{path}: line {number}: BPE id {bpe_id} is not in encoder.json")
                bpe_ids.append(bpe_id)
            else:
                bpe_ids.append(None)  # a plain word (madeupword0000…): never produced by the BPE
            symbols.append(symbol)
        if not symbols:
            raise ValueError(f"{path}: empty dictionary")
        return symbols, bpe_ids

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def _encode_bpe(self, text: str) -> list[int]:
        bpe_ids = self._bpe.encode(text, add_special_tokens=False).ids
        return [self._bpe_to_model[bpe_id] for bpe_id in bpe_ids]

    def _code_id(self, word: str, k: int) -> int:
        if k >= self.num_codes:
            raise ValueError(
                f"token {word!r}: code index {k} is out of range, valid codes are 0..{self.num_codes - 1}"
            )
        return self.first_code_id + k

    def _piece_bytes(self, token_id: int) -> bytes | None:
        return self._pieces[token_id] if token_id < len(self._pieces) else None

    def id_to_token(self, token_id: int) -> str:
        """Specials, `<mask>`, `<code_k>`, `<bin_k>` and madeupwords by symbol; BPE pieces as GPT-2 strings."""
        token_id = _check_id(token_id, "token_id", self.vocab_size)
        if token_id >= self.first_bin_id:
            return f"<bin_{token_id - self.first_bin_id}>"
        if token_id >= self.first_code_id:
            return f"<code_{token_id - self.first_code_id}>"
        if token_id == self.mask_id:
            return "<mask>"
        if token_id >= 4 and (bpe_id := self._dict_bpe_ids[token_id - 4]) is not None:
            return self._bpe_tokens[bpe_id]
        return self._symbols[token_id]

    def save(self, path: str | Path) -> Path:
        """Write a reference to the BPE folder with the files' SHA-256 (the OFA files are never copied)."""
        document = {
            "format": FILE_FORMAT,
            "format_version": FILE_FORMAT_VERSION,
            "backend": self.backend,
            "vocab_size": self.vocab_size,
            "num_bins": self.num_bins,
            "bpe_dir": str(self.bpe_dir),
            "sha256": self.sha256,
        }
        return _write_document(path, document)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "mask_id": self.mask_id,
            "first_code_id": self.first_code_id,
            "num_codes": self.num_codes,
            "bpe_dir": str(self.bpe_dir),
            "sha256": self.sha256,
        }


class TrainedTokenizer(Tokenizer):
    """A byte-level BPE trained on a corpus with `tokenizers` (DESIGN decision 4, the offline default).

    Id layout: 0..3 `<s> <pad> </s> <unk>`, then the 256 byte tokens and the learned merges, then
    `num_bins` `<bin_k>` tokens last. Pre-tokenisation is GPT-2's (regex split, no prefix space), so the
    encoding is case- and leading-space-sensitive exactly like the ofa backend, and any text is encodable
    (every byte has a token; `<unk>` is never produced).

    File format (one JSON document, written by `save`): top-level metadata keys
    ``format`` ("imtcxr-tokenizer"), ``format_version``, ``backend`` ("trained"), ``vocab_size`` (V, bins
    included), ``bpe_vocab_size``, ``num_bins``, ``special_tokens``, ``training`` (the arguments of `train`
    and the tokenizers version), and ``tokenizer``: the `tokenizers` JSON, embedded as an object (not a string),
    so `tokenizers.Tokenizer.from_str(json.dumps(doc["tokenizer"]))` also loads it. The bins are not in the
    `tokenizers` part; this class handles them. Training the same corpus with the same arguments and the same
    `tokenizers` version writes the same bytes.
    """

    backend = "trained"

    def __init__(
        self, bpe: tokenizers.Tokenizer, *, num_bins: int = NUM_BINS, training: dict[str, Any] | None = None
    ):
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            if bpe.token_to_id(token) != expected_id:
                raise ValueError(f"tokenizer: special token {token!r} must have id {expected_id}")
        # Text such as "<pad>" in an input is plain text, as in GPT-2: never match added tokens in the input.
        bpe.encode_special_tokens = True
        self._bpe = bpe
        self._num_bins = operator.index(num_bins)
        if self._num_bins <= 0:
            raise ValueError(f"num_bins: got {num_bins}, expected a positive integer")
        self.training = dict(training or {})
        self.bpe_vocab_size = bpe.get_vocab_size(with_added_tokens=True)
        self._pieces: list[bytes | None] = [None] * len(SPECIAL_TOKENS)
        for token_id in range(len(SPECIAL_TOKENS), self.bpe_vocab_size):
            token = bpe.id_to_token(token_id)
            piece = None if token is None else _token_bytes(token)
            if piece is None:
                raise ValueError(f"tokenizer: id {token_id} ({token!r}) is not a byte-level BPE token")
            self._pieces.append(piece)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int,
        min_frequency: int = 2,
        num_bins: int = NUM_BINS,
        show_progress: bool = False,
    ) -> TrainedTokenizer:
        """Learn a byte-level BPE from `texts`.

        `vocab_size` is the total V the model will see (bins included), an upper bound: a small corpus may run
        out of merges first. `min_frequency` is the least count of a pair to be merged. Literal `<bin_k>` words
        in the texts are removed before training, as `encode` never BPE-encodes them.
        """
        smallest = len(SPECIAL_TOKENS) + 256 + num_bins
        if operator.index(vocab_size) < smallest:
            raise ValueError(
                f"vocab_size: got {vocab_size}, expected at least {smallest} (4 specials + 256 bytes + {num_bins} bins)"
            )
        count = 0

        def plain_text() -> Iterator[str]:
            nonlocal count
            for text in texts:
                count += 1
                yield from (
                    piece for is_literal, piece in _split_literals(text, cls._literal_word) if not is_literal
                )

        bpe = _byte_level_bpe_tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - num_bins,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so nothing is ever <unk>
            show_progress=show_progress,
        )
        bpe.train_from_iterator(plain_text(), trainer=trainer)
        training = {
            "vocab_size": vocab_size,
            "min_frequency": min_frequency,
            "num_texts": count,
            "tokenizers_version": tokenizers.__version__,
        }
        return cls(bpe, num_bins=num_bins, training=training)

    @property
    def vocab_size(self) -> int:
        return self.bpe_vocab_size + self._num_bins

    @property
    def num_bins(self) -> int:
        return self._num_bins

    def _encode_bpe(self, text: str) -> list[int]:
        return self._bpe.encode(text, add_special_tokens=False).ids

    def _piece_bytes(self, token_id: int) -> bytes | None:
        return self._pieces[token_id] if token_id < self.bpe_vocab_size else None

    def id_to_token(self, token_id: int) -> str:
        """Specials and `<bin_k>` by symbol; BPE pieces as byte-level strings ('Ġheart')."""
        token_id = _check_id(token_id, "token_id", self.vocab_size)
        if token_id >= self.first_bin_id:
            return f"<bin_{token_id - self.first_bin_id}>"
        return str(self._bpe.id_to_token(token_id))

    def to_document(self) -> dict[str, Any]:
        """The JSON document `save` writes (see the class docstring)."""
        return {
            "format": FILE_FORMAT,
            "format_version": FILE_FORMAT_VERSION,
            "backend": self.backend,
            "vocab_size": self.vocab_size,
            "bpe_vocab_size": self.bpe_vocab_size,
            "num_bins": self.num_bins,
            "special_tokens": list(SPECIAL_TOKENS),
            "training": self.training,
            "tokenizer": json.loads(self._bpe.to_str()),
        }

    def save(self, path: str | Path) -> Path:
        return _write_document(path, self.to_document())

    @classmethod
    def from_document(cls, document: dict[str, Any], source: str = "document") -> TrainedTokenizer:
        """Rebuild from `to_document()`'s dict; errors name `source` (the file) and the bad field."""
        for key in ("tokenizer", "num_bins", "vocab_size"):
            if key not in document:
                raise ValueError(f"{source}: field {key!r} is missing")
        try:
            bpe = tokenizers.Tokenizer.from_str(json.dumps(document["tokenizer"]))
        except Exception as error:  # tokenizers raises a bare Exception for a malformed document
            raise ValueError(
                f"{source}: field 'tokenizer' is not a valid tokenizers JSON ({error})"
            ) from None
        pre = document["tokenizer"].get("pre_tokenizer") or {}
        if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex"):
            raise ValueError(
                f"{source}: field 'tokenizer': expected a ByteLevel pre-tokenizer with the GPT-2 regex"
            )
        try:
            tok = cls(bpe, num_bins=document["num_bins"], training=document.get("training"))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None
        if tok.vocab_size != document["vocab_size"]:
            raise ValueError(
                f"{source}: field 'vocab_size' is {document['vocab_size']}, the tokenizer has {tok.vocab_size}"
            )
        return tok

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "bpe_vocab_size": self.bpe_vocab_size, "training": self.training}


def _write_document(path: str | Path, document: dict[str, Any]) -> Path:
    """One JSON object, one top-level key per line (metadata readable at a glance), deterministic bytes."""
    path = Path(path)
    lines = [f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}" for key, value in document.items()]
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)  # never leave a half-written tokenizer behind
    return path


def load_tokenizer(path_or_dir: str | Path, *, bpe_dir: str | Path | None = None) -> Tokenizer:
    """Open a tokenizer of either backend.

    `path_or_dir` is an OFA BPE folder (encoder.json, vocab.bpe, dict.txt), or a JSON file written by
    `Tokenizer.save`. For a saved ofa reference, `bpe_dir` overrides the folder recorded in the file (e.g. on
    another machine); the files' SHA-256 must match the recorded ones either way.
    """
    path = Path(path_or_dir).expanduser()
    if path.is_dir():
        if not (path / "encoder.json").exists():
            raise FileNotFoundError(
                f"{path}: a folder must be the OFA BPE folder holding {', '.join(OFA_FILES)}; "
                "a trained tokenizer is a .json file"
            )
        return OfaTokenizer(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file or OFA BPE folder not found")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON tokenizer file ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
        raise ValueError(
            f"{path}: not an {FILE_FORMAT} file (expected a JSON object with format={FILE_FORMAT!r})"
        )
    if document.get("format_version") != FILE_FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {document.get('format_version')!r} is not supported (expected {FILE_FORMAT_VERSION})"
        )
    backend = document.get("backend")
    if backend == "trained":
        return TrainedTokenizer.from_document(document, source=str(path))
    if backend == "ofa":
        folder = Path(bpe_dir) if bpe_dir is not None else Path(str(document.get("bpe_dir", "")))
        tok = OfaTokenizer(folder)
        recorded = document.get("sha256") or {}
        for name in OFA_FILES:
            if recorded.get(name) != tok.sha256[name]:
                raise ValueError(
                    f"{path}: {folder / name} has SHA-256 {tok.sha256[name]}, the file records {recorded.get(name)}"
                )
        return tok
    raise ValueError(f"{path}: field 'backend' is {backend!r}, expected 'ofa' or 'trained'")


# --------------------------------------------------------------------------------------------------------------
# command line: `imtcxr tokenizer ...`


def _read_corpus(paths: Sequence[str]) -> list[str]:
    """Non-empty lines of the corpus files, one text per line."""
    texts: list[str] = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: corpus file not found")
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 ({error})") from None
        texts.extend(line for line in content.splitlines() if line.strip())
    return texts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imtcxr tokenizer", description="Train or inspect a tokenizer (spec §9)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a byte-level BPE on text files (one text per line)")
    train.add_argument("--corpus", action="append", required=True, metavar="FILE", help="repeatable")
    train.add_argument("--vocab-size", type=int, required=True, help="total vocabulary V, bins included")
    train.add_argument("--min-frequency", type=int, default=2)
    train.add_argument("--out", required=True, metavar="PATH.json")

    encode = commands.add_parser("encode", help="print the ids of a text as JSON, then the decoded text")
    encode.add_argument("--tokenizer", required=True, metavar="PATH_OR_BPE_DIR")
    encode.add_argument("--framing", choices=("none", "source", "target"), default="none", help="spec §9.3")
    encode.add_argument("text")

    info = commands.add_parser("info", help="print the tokenizer's description as JSON")
    info.add_argument("--tokenizer", required=True, metavar="PATH_OR_BPE_DIR")
    return parser


def cli_main(argv: list[str]) -> int:
    """`imtcxr tokenizer {train,encode,info}`; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            start = time.perf_counter()
            texts = _read_corpus(args.corpus)
            tok = TrainedTokenizer.train(
                texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency, show_progress=True
            )
            out = tok.save(args.out)
            summary = {"out": str(out), "texts": len(texts), "vocab_size": tok.vocab_size}
            summary["seconds"] = round(time.perf_counter() - start, 3)
            print(json.dumps(summary))
        elif args.command == "encode":
            tok = load_tokenizer(args.tokenizer)
            framing = {"none": tok.encode, "source": tok.encode_source, "target": tok.encode_target}
            ids = framing[args.framing](args.text)
            print(json.dumps(ids))
            print(tok.decode(ids))
        else:
            print(json.dumps(load_tokenizer(args.tokenizer).describe()))
    except (OSError, ValueError) as error:
        print(f"imtcxr tokenizer: error: {error}", file=sys.stderr)
        return 1
    return 0
