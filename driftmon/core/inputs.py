# cython: wraparound=True
# (Compiled like the per-event modules, but its array code indexes from the end.)
"""The input side of a key: what the prompt mix predicts about the outputs (issue 16).

A change in the prompt mix (a campaign, a new feature, another time zone) moves the output
features of an unchanged model. Per key, an :class:`InputModel` learns from a reference of
``reference_events`` events how the output features (as fed to the detectors) depend on cheap
features of the prompt (:func:`prompt_features`): a closed-form ridge per output feature,
its penalty chosen by 5-fold cross-fitting (folds keyed by the prompt, so a prompt seen
twice is in one fold), the residual scale from the out-of-fold residuals (0/1 features
floored at half the add-½ binomial sd). The reference is kept as per-fold sufficient
statistics (XᵀX, Xᵀy, yᵀy as one packed triangle), never as rows. Then the model is frozen.

The **input channel** watches the prediction itself: per output feature the prompt
explains (cross-fitted R² ≥ ``min_r2``), a two-sided CUSUM on the standardised prediction
``(ŷ − mean_ref ŷ) / sd_ref ŷ``. It depends on the prompts only, so it fires when the mix
of prompts moves, whatever the model does. A ``prompt_version`` not seen in the reference
that takes a sizeable share of the recent events (an EWMA of the share above
``version_share``) fires it too. When it fires, :attr:`InputModel.drift_since` is set and a
new reference starts on the new mix; when that is fitted the flag is cleared and
:attr:`InputModel.rebaseline_due` asks the monitor to have the key's output detectors learn
their reference again on the new mix.

An output detection is ``input_drift`` (:meth:`InputModel.attributes_to_input`) when the
flag is set, when the channel's CUSUM is at ``confirm`` (on its way to ``h``), or when the
detected change began before the fit that followed the last input alarm; otherwise it is
``drift``: the model.

>>> import random
>>> model = InputModel(AttributionConfig(reference_events=400))
>>> rng = random.Random(0)
>>> for i in range(400):
...     words = rng.randint(3, 40)
...     prompt = ("explain " + "word " * words, None, None)
...     model.observe(prompt, {"output_chars": 3.0 + 0.05 * words + rng.gauss(0, 0.2)}, i)
>>> model.flush()
>>> model.fitted, model.watched, round(model.r2["output_chars"], 2)
(True, ('output_chars',), 0.86)
>>> for i in range(400, 600):
...     model.observe(("explain " + "word " * 60, None, None), {}, i)
>>> model.flush()
>>> model.drift_since, model.fitted
(416, False)
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, reduce
from importlib.machinery import EXTENSION_SUFFIXES
from operator import itemgetter, or_
from struct import Struct
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

# -- prompt features ----------------------------------------------------------------------

HEAD_CHARS: Final = 300  # every feature but the length reads the prompt's head
_WORDS: Final = 40  # the words looked up in the lexicon: the first ones (the rest as one)
assert _WORDS + 2 == 42, "_scan's word arrays (inputs.pxd) hold _WORDS + 2 entries"
_LEXICON: Final[dict[str, tuple[str, ...]]] = {
    "write": ("write", "writing", "compose", "draft", "author"),
    "list": ("list", "name", "steps", "enumerate", "outline", "ways", "tips", "examples"),
    "explain": ("explain", "describe", "elaborate", "discuss", "define", "meaning", "why"),
    "code": (
        "code",
        "python",
        "sql",
        "javascript",
        "function",
        "program",
        "script",
        "java",
        "html",
        "css",
        "regex",
        "bash",
        "algorithm",
        "c",
        "cpp",
        "rust",
        "query",
        "api",
    ),
    "summarize": ("summarize", "summarise", "summary", "tldr", "summarization"),
    "translate": ("translate", "translation", "french", "spanish", "german", "chinese"),
    "rewrite": ("rewrite", "rephrase", "paraphrase", "fix", "correct", "edit", "improve"),
    "classify": ("classify", "categorize", "identify", "label", "detect", "determine"),
    "suggest": ("suggest", "recommend", "recommendations", "advice", "ideas", "tips"),
    "create": ("create", "generate", "make", "design", "invent", "plan", "come"),
    "compare": ("compare", "comparison", "difference", "differences", "versus", "vs"),
    "creative": (
        "poem",
        "story",
        "song",
        "haiku",
        "joke",
        "rap",
        "lyrics",
        "essay",
        "letter",
        "email",
        "tweet",
        "slogan",
        "limerick",
        "dialogue",
    ),
    "brevity": ("brief", "briefly", "short", "concise", "sentence", "one", "few", "word"),
    "given": ("given", "following", "input", "below", "above", "text", "passage"),
    "table": ("table", "format", "json", "csv", "markdown", "bullet", "bullets", "columns"),
    "first_person": ("i", "my", "me", "im", "we", "our", "us"),
    "math": ("calculate", "solve", "equation", "math", "sum", "percent", "probability"),
    "fact": ("who", "when", "where", "capital", "year", "history", "fact", "facts"),
}
_WH: Final = frozenset(b"what which who whom whose when where why how".split())
_AUX: Final = frozenset(
    b"is are was were can could do does did should would will shall may might have has".split()
)
# Per-byte classes of the prompt's head, counted per prompt in one bincount (class 0: other).
_CLASSES: Final = ("space", "newline", "question", "digit", "code", "colon", "quote")
_CLASS_BYTES: Final = (b" \t", b"\n", b"?", b"0123456789", b"{}();=<>[]_\\/|`$#", b":", b"\"'")
_CLASS_OF = np.zeros(256, np.int64)
for _c, _chars in enumerate(_CLASS_BYTES, start=1):
    _CLASS_OF[list(_chars)] = _c
_N_CLASSES: Final = len(_CLASSES) + 1
_SHAPE: Final = (
    "bias", "log_chars", "log_words", "log_newlines", "log_questions", "log_digits",
    "log_code_chars", "log_colons", "log_quotes", "wh_start", "aux_start",
)  # fmt: skip
PROMPT_FEATURES: Final = (*_SHAPE, *(f"lex_{name}" for name in _LEXICON), "log_input_tokens")
"""The names of :func:`prompt_features`' vector, in order (the first is a constant 1)."""
N_PROMPT_FEATURES: Final = len(PROMPT_FEATURES)
_LEX_AT: Final = len(_SHAPE)
_TOKENS_AT: Final = N_PROMPT_FEATURES - 1
_WORD_SLOTS: Final[dict[bytes, tuple[int, ...]]] = {}
for _i, _words in enumerate(_LEXICON.values()):
    for _w in _words:
        _WORD_SLOTS[_w.encode()] = (*_WORD_SLOTS.get(_w.encode(), ()), _LEX_AT + _i)
_LEX_WORDS: Final = frozenset(_WORD_SLOTS)
_FLAGS_AT: Final = 9  # wh_start, aux_start, then the lexicon flags
_FIRST: Final = {w: 1 for w in _WH} | {w: 2 for w in _AUX}
_WORD_BITS: Final = {
    word: reduce(or_, (1 << (slot - _FLAGS_AT) for slot in slots))
    for word, slots in _WORD_SLOTS.items()
}
_BIT_SHIFTS: Final = np.arange(_TOKENS_AT - _FLAGS_AT)
# Lower-cased letters, digits and non-ASCII bytes kept, NUL (between prompts) kept, every
# other byte a space: split() gives the words.
_WORD_TABLE: Final = bytes(
    b if (b == 0 or 48 <= b <= 57 or 97 <= b <= 122 or b >= 128) else 32 for b in range(256)
)
# For _scan: per byte its class (NUL a space, as _count makes it), as an increment of one
# 9-bit lane per counted class (class k in bits 9(k-1)..9k-1: a head of at most HEAD_CHARS
# characters has at most 300 bytes of one ASCII class, so no lane overflows), and for a
# word byte its lower-case value (0: not a word byte).
_LANE_BITS: Final = 9
assert HEAD_CHARS < 1 << _LANE_BITS, "a class lane of _scan must hold a whole head's count"
_SCAN_CLASS: Final = bytes(1 if b == 0 else int(_CLASS_OF[b]) for b in range(256))
_SCAN_INC: Final = np.array(
    [1 << (_LANE_BITS * (k - 1)) if k else 0 for k in _SCAN_CLASS], dtype=np.int64
)
_SCAN_WORD: Final = bytes(
    b + 32 if 65 <= b <= 90 else b if (48 <= b <= 57 or 97 <= b <= 122 or b >= 128) else 0
    for b in range(256)
)
# The words of _WORD_BITS and _FIRST as an open-addressing table that _scan reads without
# making a Python object per word: slot = _slot_hash of the word, then the next slots; per
# slot the word (_SLOT_BYTES bytes, zero-padded), its length (0: empty), its lexicon bits
# and its first-word bits (wh 1, aux 2). Sparse (about 1 slot in 6 used), so that a word
# not in it mostly finds an empty slot at once.
_SLOTS: Final = 1024
_SLOT_BITS: Final = 10  # log2(_SLOTS)
_SLOT_BYTES: Final = 16
_GOLDEN: Final = 2654435761  # 2^32 / golden ratio: Knuth's multiplicative hash


def _slot_hash(word: bytes) -> int:
    """The first slot of a (lower-case) word: a multiplicative hash of its first two bytes,
    its last byte and its length, which _scan reads without a loop over the word."""
    second = word[1] if len(word) > 1 else 0
    key = word[0] << 16 ^ second << 8 ^ word[-1] ^ len(word) << 24
    return (key * _GOLDEN & 0xFFFFFFFF) >> (32 - _SLOT_BITS)


def _slot_table() -> tuple[bytes, bytes, NDArray[np.int64], bytes]:
    words, lengths = bytearray(_SLOTS * _SLOT_BYTES), bytearray(_SLOTS)
    lex, first = np.zeros(_SLOTS, np.int64), bytearray(_SLOTS)
    for word in {*_WORD_BITS, *_FIRST}:
        assert 0 < len(word) < _SLOT_BYTES
        slot = _slot_hash(word)
        while lengths[slot]:
            slot = (slot + 1) & (_SLOTS - 1)
        words[slot * _SLOT_BYTES : slot * _SLOT_BYTES + len(word)] = word
        lengths[slot] = len(word)
        lex[slot], first[slot] = _WORD_BITS.get(word, 0), _FIRST.get(word, 0)
    return bytes(words), bytes(lengths), lex, bytes(first)


_SLOT_WORDS, _SLOT_LENGTHS, _SLOT_LEX, _SLOT_FIRST = _slot_table()
# The Cython extension is loaded (see setup.py), not this source.
_COMPILED: Final = __file__.endswith(tuple(EXTENSION_SUFFIXES))


def prompt_block(texts: list[str | None], tokens: list[int | None]) -> tuple[FloatArray, Any]:
    """:func:`prompt_features` of many prompts (rows) and each one's fold of the
    cross-fitting (a function of the prompt: one prompt is always in one fold)."""
    heads = [t[:HEAD_CHARS] if t else "" for t in texts]
    lengths = [len(t) if t else 0 for t in texts]
    return _block(heads, lengths, [t or 0 for t in tokens])


def _block(
    heads: Sequence[str], lengths: Sequence[int], tokens: Sequence[int]
) -> tuple[FloatArray, Any]:
    """:func:`prompt_block` of the prompts' heads (``HEAD_CHARS``), lengths and token counts
    (0: none). The counts are :func:`_scan`'s when compiled (one pass over each head's
    bytes), :func:`_count`'s as plain Python (array passes over the whole block, none
    without text): the same numbers."""
    n = len(heads)
    if _COMPILED:
        x, fold_of = np.zeros((n, N_PROMPT_FEATURES)), np.empty(n)
        _scan(x, heads, lengths, tokens, fold_of)
    else:
        x = _count(heads, lengths, tokens)
        fold_of = x[:, 1] + 3 * x[:, 2] + x[:, _TOKENS_AT]
    # Not a hash of the text (a C call per prompt): a function of it all the same.
    folds = fold_of.astype(np.int64) % FOLDS
    np.log1p(x[:, 1:9], out=x[:, 1:9])
    np.log1p(x[:, _TOKENS_AT], out=x[:, _TOKENS_AT])
    return x, folds


def _count(heads: Sequence[str], lengths: Sequence[int], tokens: Sequence[int]) -> FloatArray:
    """The rows of :func:`_block` before the logarithms: a constant 1, the length, the
    words (separators + 1), the byte-class counts, the flags, the tokens. Over the whole
    block at once (one buffer, one byte-class bincount); per prompt, the Python work is a
    split and a set intersection of its first words. The definition of the features."""
    n = len(heads)
    x = np.zeros((n, N_PROMPT_FEATURES))
    x[:, 0] = 1.0
    x[:, _TOKENS_AT] = tokens
    x[:, 1] = lengths
    if not any(heads):
        x[:, 2] = x[:, 1] > 0
        return x
    joined = "\0".join(heads)
    if joined.count("\0") != n - 1:  # a prompt holding NUL would count as two
        joined = "\0".join([h.replace("\0", " ") for h in heads])
    raw = (joined + "\0").encode("utf-8", "surrogatepass")
    buf = np.frombuffer(raw, np.uint8)
    segment = np.cumsum(buf == 0)
    segment -= buf == 0  # the NUL ending a prompt belongs to it (as class 0)
    counts = np.bincount(segment * _N_CLASSES + _CLASS_OF[buf], minlength=n * _N_CLASSES)
    counts = counts.reshape(n, _N_CLASSES)
    x[:, 2] = counts[:, 1] + counts[:, 2] + (x[:, 1] > 0)  # words ≈ separators + 1
    x[:, 3:9] = counts[:, 2:]
    # Per prompt one int: bit j set when the flag in column 9 + j is (wh, aux, lexicon).
    segments = raw[:-1].lower().translate(_WORD_TABLE).split(b"\0", n - 1)
    masks = [
        reduce(or_, map(_WORD_BITS.__getitem__, _LEX_WORDS.intersection(w)), _FIRST.get(w[0], 0))
        if w
        else 0
        for w in (segment.split(None, _WORDS) for segment in segments)
    ]
    bits = np.array(masks, dtype=np.int64)[:, None] >> _BIT_SHIFTS
    x[:, _FLAGS_AT:_TOKENS_AT] = bits & 1
    return x


def _scan(
    x: FloatArray,
    heads: Sequence[str],
    lengths: Sequence[int],
    tokens: Sequence[int],
    fold_of: FloatArray,
) -> None:
    """:func:`_count` into ``x`` (zeros), one head at a time in one pass over its UTF-8
    bytes, and into ``fold_of`` what :func:`_block` takes the fold of. The pass has no
    branch that depends on the text (a branch per word boundary mispredicted twice a word
    and set its speed): it sums the bytes' class increments (``_SCAN_INC``, one lane per
    class) and notes where the first ``_WORDS`` + 1 words start and end (``_SCAN_WORD``);
    then those words are looked up in the slot table. Compiled (typed in ``inputs.pxd``),
    it makes no Python object but the encoded head; as plain Python it is slower than
    :func:`_count` and not used."""
    rows, lex, sums, inc = x, _SLOT_LEX, fold_of, _SCAN_INC
    tables = (_SCAN_WORD, _SLOT_WORDS, _SLOT_LENGTHS, _SLOT_FIRST)
    word_bytes, slot_words, slot_lengths, slot_first = tables
    limit, flags_at, tokens_at = _WORDS, _FLAGS_AT, _TOKENS_AT
    width, last_slot, bits32 = _SLOT_BYTES, _SLOTS - 1, 0xFFFFFFFF
    shift, golden, lane, lane_mask = 32 - _SLOT_BITS, _GOLDEN, _LANE_BITS, (1 << _LANE_BITS) - 1
    # Where each of the first _WORDS + 1 words starts and ends (+ 1 slot written past them;
    # a literal: the compiled arrays' size, _WORDS + 2, checked where _WORDS is defined).
    starts = [0] * 42
    ends = [0] * 42
    for i in range(len(heads)):
        size = lengths[i]
        rows[i, 0] = 1.0
        rows[i, 1] = size
        rows[i, 2] = 1.0 if size > 0 else 0.0
        rows[i, tokens_at] = tokens[i]
        sums[i] = rows[i, 1] + 3 * rows[i, 2] + rows[i, tokens_at]
        head = heads[i]
        if not head:
            continue
        raw = head.encode("utf-8", "surrogatepass")
        p = raw
        n = len(raw)
        acc = 0
        begun = ended = 0
        inside = 0  # the previous byte was a word byte
        for j in range(n):
            b = p[j]
            acc += inc[b]
            w = word_bytes[b] != 0
            # Always written, kept only when a word starts (ends) here and fewer than
            # _WORDS + 1 have: the count moves by 0 or 1 without a branch.
            starts[begun] = j
            begun += (w > inside) & (begun <= limit)
            ends[ended] = j
            ended += (inside > w) & (ended <= limit)
            inside = w
        if inside and ended <= limit:
            ends[ended] = n
            ended += 1
        # bytes.split(None, _WORDS) makes the words after the first _WORDS one piece: that
        # piece is a word only if it ends the head.
        mask = 0
        for k in range(ended):
            start = starts[k]
            length = ends[k] - start
            if length >= width or (k == limit and ends[k] != n):
                continue
            h = word_bytes[p[start]] << 16 ^ word_bytes[p[start + length - 1]] ^ length << 24
            if length > 1:
                h ^= word_bytes[p[start + 1]] << 8
            slot = (h * golden & bits32) >> shift
            while slot_lengths[slot]:
                if slot_lengths[slot] == length:
                    q = 0
                    while q < length and word_bytes[p[start + q]] == slot_words[slot * width + q]:
                        q += 1
                    if q == length:
                        mask |= lex[slot]
                        if k == 0:
                            mask |= slot_first[slot]
                        break
                slot = (slot + 1) & last_slot
        spaces, newlines = acc & lane_mask, acc >> lane & lane_mask
        rows[i, 2] += spaces + newlines  # words ≈ separators + 1
        sums[i] = rows[i, 1] + 3 * rows[i, 2] + rows[i, tokens_at]
        for k in range(2, 8):
            rows[i, k + 1] = acc >> (lane * (k - 1)) & lane_mask
        for bit in range(tokens_at - flags_at):
            if mask >> bit & 1:
                rows[i, flags_at + bit] = 1.0


def _cusum_rows(
    z: FloatArray, cusum: FloatArray, ends: FloatArray, k: float, clip: float, h: float
) -> int:
    """:meth:`InputModel._channel`'s CUSUMs as loops (compiled; the same operations in the
    same order as its array code, so the same numbers): the first row any of them
    exceeds ``h`` at, or -1 with each one's last value in ``ends``."""
    zv, start, out = z, cusum, ends
    fired = rows = len(zv)
    for j in range(len(start)):
        run = low = 0.0
        for t in range(rows):
            v = zv[t, j]
            if v > clip:
                v = clip
            if v < -clip:
                v = -clip
            v -= k
            run = v if t == 0 else run + v
            c = run + start[j]
            if c < low or c != c:
                low = c
            s = c - low
            if s > h:
                fired = min(fired, t)
                break
            out[j] = s
    return -1 if fired == rows else fired


def _accumulate(stats: FloatArray, x: FloatArray, ys: FloatArray, folds: Any, rows: int) -> None:
    """Add the first ``rows`` events of a block to the reference statistics: per event,
    z = (prompt features, output values) into its fold's packed upper triangle of ZᵀZ.
    The compiled path of :meth:`InputModel.flush` (typed in ``inputs.pxd``): no matrix
    product (BLAS would spread one this size over threads), and a zero entry of z (most
    prompt flags) skips its row of products. As plain Python it is slow and not used."""
    st, xv, yv, fv = stats, x, ys, folds
    dx = xv.shape[1]
    z = np.empty(dx + yv.shape[1])
    zv = z
    d = len(zv)
    for i in range(rows):
        for r in range(dx):
            zv[r] = xv[i, r]
        for r in range(dx, d):
            zv[r] = yv[i, r - dx]
        f = fv[i]
        e = 0
        for r in range(d):
            zr = zv[r]
            if zr == 0.0:
                e += d - r
                continue
            for c in range(r, d):
                st[f, e] += zr * zv[c]
                e += 1


def prompt_features(text: str | None, input_tokens: int | None) -> FloatArray:
    """Cheap shape and lexicon features of a prompt (:data:`PROMPT_FEATURES`): counts
    (characters, words, newlines, ``?``, digits, code characters, ``:``, quotes) as
    ``log1p``, a wh- or auxiliary first word, 18 lexicon flags, and
    ``log1p(input_tokens)`` (0 when absent). No model; computed per block of events by
    :func:`prompt_block`, which this calls with one prompt.

    >>> x = prompt_features("Write a short poem about the sea?", 9)
    >>> [n for n, v in zip(PROMPT_FEATURES, x) if v and not n.startswith("log")]
    ['bias', 'lex_write', 'lex_creative', 'lex_brevity']
    """
    rows, _ = prompt_block([text], [input_tokens])
    return rows.reshape(-1)  # the one row


Prompt = tuple[str | None, int | None, str | None]
"""What an event tells about its prompt: ``(input, input_tokens, prompt_version)``."""


# -- the per-key model ----------------------------------------------------------------------

FOLDS: Final = 5
MAX_TARGETS: Final = 14  # bounds the reference statistics: 5 × 46·47/2 floats ≈ 43 KB
MAX_VERSIONS: Final = 64  # prompt versions remembered from a reference
ALPHAS: Final = tuple(float(a) for a in np.logspace(-1, 4, 11))
BLOCK: Final = 64  # events processed at once (see InputModel)
_VERSION_EWMA: Final = 0.02  # the version share's memory: about 50 events
_SKIPPED_TARGETS: Final = frozenset({"feedback", "embedding_distance", "embedding"})


@dataclass(frozen=True, slots=True)
class AttributionConfig:
    """Input-drift attribution (``driftmon.config`` builds it from ``settings.attribution``).

    ``reference_events``: events fitted per key (and after each input alarm). ``k``, ``h``:
    the input channel's CUSUM drift and threshold, in reference sds of the prediction.
    ``confirm``: at an output detection, an input-channel CUSUM already at this level (not
    yet at ``h``) labels it ``input_drift`` too: the channel was on its way.
    ``min_r2``: an output feature is watched on the input side only if the prompt features
    explain at least this share of its variance (cross-fitted). ``version_share``: a
    prompt version absent from the reference fires the channel when its recent share
    exceeds this (0 turns the rule off).
    """

    enabled: bool = True
    reference_events: int = 1500
    k: float = 0.25
    h: float = 30.0
    confirm: float = 15.0
    min_r2: float = 0.02
    version_share: float = 0.2
    z_clip: float = 4.0


def _packer(targets: tuple[str, ...]) -> Callable[[dict[str, float]], bytes]:
    """An event's values of ``targets`` as doubles (bytes), read and packed in C (a list
    and ``array.extend`` convert each value through argument parsing); KeyError when one
    is missing."""
    pack = Struct(f"{len(targets)}d").pack
    if not targets:
        return lambda _features: b""
    get = itemgetter(*targets)
    if len(targets) == 1:
        return lambda features: pack(get(features))
    return lambda features: pack(*get(features))


@lru_cache(maxsize=8)
def _packed_index(d: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Row and column of each entry of a packed upper triangle of a d × d matrix."""
    rows, cols = np.triu_indices(d)
    return rows.astype(np.intp), cols.astype(np.intp)


class InputModel:
    """One key's input side: reference statistics, then the frozen fit and the channel.

    Events are buffered and processed ``BLOCK`` at a time (prompt features, predictions and
    CUSUMs of the whole block in a few array operations, where per event they would cost
    more than the rest of the pipeline); :meth:`flush` processes the buffer at once, and
    the monitor calls it before labelling a detection, so an input alarm at or before the
    detected event is always seen.
    """

    def __init__(self, config: AttributionConfig) -> None:
        self.config = config
        self.targets: tuple[str, ...] | None = None
        self._event = 0
        self.drift_since: int | None = None
        self.alarms = 0
        self.last_alarm: int | None = None  # the key event of the last input alarm
        self.refitted_at: int | None = None  # the key event of the last fit after an alarm
        # Set by a fit that follows an input alarm: the key's output detectors are to learn
        # their reference again on the new mix (the monitor does it and clears this).
        self.rebaseline_due = False
        # (input's head, its length, input_tokens or 0, prompt_version, key event count)
        self._pending: list[tuple[str, int, int, str | None, int]] = []
        # While not fitted, the pending events' output values, row after row: as doubles,
        # not the events' float objects, whose memory the pipeline then reuses at once.
        self._outputs = array("d")
        self._packer: Callable[[dict[str, float]], bytes] | None = None  # not pickled
        self._reset_reference()

    def _reset_reference(self) -> None:
        self.n = 0
        self._stats: FloatArray | None = None
        self._versions: set[str | None] | None = set()
        self.fitted = False
        self.watched: tuple[str, ...] = ()
        self.r2: dict[str, float] = {}
        self.residual_sd: dict[str, float] = {}
        self.coef: FloatArray | None = None  # prompt features × targets, once fitted
        self._weights: FloatArray | None = None
        self._cusum: FloatArray | None = None
        self._new_version_share = 0.0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_packer", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_outputs" not in state:  # pickled before _outputs: values in the pending entries
            pending = state["_pending"]
            rows = [entry[5] for entry in pending if entry[5] is not None]
            state["_outputs"] = array("d", [value for row in rows for value in row])
            state["_pending"] = [entry[:5] for entry in pending]
        self.__dict__.update(state)
        self._packer = None

    def observe(self, prompt: Prompt, features: dict[str, float], event: int) -> None:
        """Take one event (``event``: the key's event count, for :attr:`drift_since`)."""
        if not self.fitted:
            self._event = event  # read by the fit that ends the reference
            if self.targets is None:
                names = [n for n in features if n not in _SKIPPED_TARGETS]
                self.targets = tuple(names[:MAX_TARGETS])
            packer = self._packer
            if packer is None:
                packer = self._packer = _packer(self.targets)
            try:
                self._outputs.frombytes(packer(features))
            except KeyError:  # an event without every target (text not captured): not fitted
                return
        text, tokens, version = prompt
        # Only the head is kept: a long prompt (a RAG context) must not grow the key's state.
        head, length = (text[:HEAD_CHARS], len(text)) if text else ("", 0)
        self._pending.append((head, length, tokens or 0, version, event))
        if len(self._pending) >= BLOCK:
            self.flush()

    def flush(self) -> None:
        """Process the buffered events."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        heads, lengths, tokens, versions, events = zip(*pending, strict=True)
        outputs, self._outputs = self._outputs, array("d")
        x, folds = _block(heads, lengths, tokens)
        if self.fitted:
            at = self._channel(x)
            version_at = self._version_rule(versions)
            if version_at >= 0 and (at < 0 or version_at < at):
                at = version_at
            if at >= 0:
                # The rest of the block came without output values: the new reference
                # starts with the next event.
                self._fire(events[at])
            return
        if self._versions is not None:
            self._versions.update(versions)
            if len(self._versions) > MAX_VERSIONS:
                self._versions = None  # too many versions to tell a new one: rule off
        assert self.targets is not None
        m = min(len(x), self.config.reference_events - self.n)
        d = N_PROMPT_FEATURES + len(self.targets)
        if self._stats is None:
            self._stats = np.zeros((FOLDS, d * (d + 1) // 2))
        ys = np.array(outputs, dtype=np.float64).reshape(len(x), len(self.targets))
        if _COMPILED:
            _accumulate(self._stats, x, ys, folds, m)
        else:
            z = np.concatenate((x, ys), axis=1)[:m]
            rows, cols = _packed_index(d)
            for f in np.unique(folds[:m]):
                zf = z[folds[:m] == f]
                self._stats[f] += (zf.T @ zf)[rows, cols]
        self.n += m
        if self.n >= self.config.reference_events:
            try:
                self._fit()
            except np.linalg.LinAlgError:  # degenerate reference: nothing watched this time
                self._weights = self._cusum = self._stats = self.coef = None
                self.fitted = True
                self._after_fit()

    def predict(self, texts: list[str | None], tokens: list[int | None]) -> FloatArray:
        """The fitted prediction of every target (columns, in :attr:`targets` order) for
        these prompts (rows)."""
        if self.coef is None:
            raise ValueError("the input model is not fitted")
        x, _ = prompt_block(texts, tokens)
        return x @ self.coef

    def _version_rule(self, versions: tuple[str | None, ...]) -> int:
        """The EWMA of "a version not in the reference" over a block: the row it first
        exceeds ``version_share`` at, or -1."""
        if self._versions is None or self.config.version_share <= 0:
            return -1
        if self._new_version_share == 0.0 and self._versions.issuperset(versions):
            return -1
        new = np.array([v not in self._versions for v in versions], dtype=np.float64)
        # e_t = (1-a) e_{t-1} + a new_t, for the whole block: e_t = r^t (e_0 + a Σ r^-i new_i)
        r = 1.0 - _VERSION_EWMA
        powers = r ** np.arange(1, len(new) + 1)
        share = powers * (self._new_version_share + _VERSION_EWMA * np.cumsum(new / powers))
        self._new_version_share = float(share[-1])
        over = share > self.config.version_share
        return int(over.argmax()) if over.any() else -1

    def _after_fit(self) -> None:
        self.rebaseline_due = self.drift_since is not None
        if self.rebaseline_due:
            self.refitted_at = self._event
        self.drift_since = None

    def _fire(self, event: int) -> None:
        self.alarms += 1
        self.last_alarm = event
        if self.drift_since is None:
            self.drift_since = event
        self._reset_reference()

    # -- the fit -------------------------------------------------------------------------------
    def _fit(self) -> None:
        assert self._stats is not None and self.targets is not None
        dx, dy = N_PROMPT_FEATURES, len(self.targets)
        d = dx + dy
        rows, cols = _packed_index(d)
        folds = np.zeros((FOLDS, d, d))
        folds[:, rows, cols] = self._stats
        folds[:, cols, rows] = self._stats
        total = folds.sum(axis=0)
        n = total[0, 0]
        # Standardise the prompt features on the whole reference (x̃ = T x, bias kept).
        mean = total[0, 1:dx] / n
        var = np.diag(total)[1:dx] / n - mean**2
        scale = np.where(var > 1e-12, 1.0 / np.sqrt(np.maximum(var, 1e-12)), 0.0)
        t = np.zeros((dx, dx))
        t[0, 0] = 1.0
        t[np.arange(1, dx), np.arange(1, dx)] = scale
        t[1:, 0] = -mean * scale
        gram = t @ folds[:, :dx, :dx] @ t.T  # per fold
        xty = t @ folds[:, :dx, dx:]
        yty = np.diagonal(folds[:, dx:, dx:], axis1=1, axis2=2)
        g_all, b_all = gram.sum(0), xty.sum(0)
        penalty = np.eye(dx)
        penalty[0, 0] = 1e-9 * n  # the intercept all but free; a fold holding every row
        # Every penalty's fit without each fold, solved at once: (alphas, folds, dx, dy).
        lhs = (g_all - gram)[None] + np.asarray(ALPHAS)[:, None, None, None] * penalty
        rhs = np.broadcast_to(b_all - xty, (len(ALPHAS), *xty.shape))
        betas = np.linalg.solve(lhs, rhs)
        sses = np.zeros((len(ALPHAS), dy))  # out-of-fold squared residuals, per alpha
        resid_sums = np.zeros((len(ALPHAS), dy))
        for f in range(FOLDS):
            beta = betas[:, f]
            sses += yty[f] - 2 * np.einsum("aij,ij->aj", beta, xty[f])
            sses += np.einsum("aij,aij->aj", beta, gram[f] @ beta)
            resid_sums += xty[f][0] - gram[f][0] @ beta
        best_sse = np.full(dy, np.inf)
        best_alpha = np.zeros(dy)
        best_sum = np.zeros(dy)
        for alpha, sse, resid_sum in zip(ALPHAS, sses, resid_sums, strict=True):
            better = sse < best_sse
            best_sse[better], best_alpha[better], best_sum[better] = (
                sse[better],
                alpha,
                resid_sum[better],
            )
        coef = np.zeros((dx, dy))
        for alpha in np.unique(best_alpha):
            cols_a = best_alpha == alpha
            coef[:, cols_a] = np.linalg.solve(g_all + alpha * penalty, b_all[:, cols_a])
        y_sum, y_sq = b_all[0], np.diagonal(total)[dx:]
        y_var = np.maximum(y_sq / n - (y_sum / n) ** 2, 0.0)
        resid_mean = best_sum / n
        resid_var = np.maximum(best_sse / n - resid_mean**2, 0.0)
        # Add-½ binomial floor for 0/1 features (y² = y): a rate never seen in the reference
        # must not get a zero scale.
        binary = np.abs(y_sq - y_sum) < 1e-9 * np.maximum(1.0, y_sq)
        p = np.clip((y_sum + 0.5) / (n + 1), 0.0, 1.0)
        floor = np.where(binary, 0.5 * np.sqrt(p * (1 - p)), 1e-3)
        residual_sd = np.maximum(np.sqrt(resid_var), floor)
        r2 = np.where(y_var > 0, 1.0 - resid_var / np.where(y_var > 0, y_var, 1.0), 0.0)
        # The prediction's reference mean and sd, in standardised prompt-feature space.
        cov = g_all / n
        pred_mean = cov[0] @ coef
        pred_sd = np.sqrt(np.maximum(np.einsum("ij,ik,kj->j", coef, cov, coef) - pred_mean**2, 0))
        watch = (r2 >= self.config.min_r2) & (pred_sd > 1e-9)
        coef_x = t.T @ coef  # back to raw prompt features: ŷ = x · coef_x
        self.coef = coef_x
        self.r2 = dict(zip(self.targets, (float(v) for v in r2), strict=True))
        self.residual_sd = dict(zip(self.targets, (float(v) for v in residual_sd), strict=True))
        self.watched = tuple(name for name, w in zip(self.targets, watch, strict=True) if w)
        # Both sides of every watched CUSUM from one product: x · W is (z, −z).
        w = coef_x[:, watch] / pred_sd[watch]
        offset = pred_mean[watch] / pred_sd[watch]
        up, down = w.copy(), -w
        up[0] -= offset
        down[0] += offset
        self._weights = np.ascontiguousarray(np.concatenate((up, down), axis=1))
        self._cusum = np.zeros(2 * int(watch.sum()))
        self._stats = None
        self.fitted = True
        self._after_fit()

    # -- the input channel -------------------------------------------------------------------
    def _channel(self, x: FloatArray) -> int:
        """Run the CUSUMs over a block of prompt rows: the row they fire at, or -1."""
        cusum, weights = self._cusum, self._weights
        if cusum is None or weights is None or not len(cusum):
            return -1
        cfg = self.config
        z = x @ weights
        if _COMPILED:
            ends = np.empty(len(cusum))
            at = _cusum_rows(z, cusum, ends, cfg.k, cfg.z_clip, cfg.h)
            if at < 0:
                self._cusum = ends
            return at
        np.minimum(z, cfg.z_clip, out=z)  # one odd prompt moves the sums by at most z_clip
        np.maximum(z, -cfg.z_clip, out=z)
        z -= cfg.k
        # The CUSUM S_t = max(0, S_{t-1} + z_t) of a whole block: with C the running sum
        # from S_0, S_t = C_t - min(0, min_{s<=t} C_s).
        c = np.cumsum(z, axis=0)
        c += cusum
        s = c - np.minimum.accumulate(np.minimum(c, 0.0), axis=0)
        over = (s > cfg.h).any(axis=1)
        if over.any():
            return int(over.argmax())
        self._cusum = s[-1].copy()
        return -1

    def attributes_to_input(self, onset: int | None = None) -> bool:
        """Whether a detection now is input drift: the channel fired (and the model is not
        fitted again yet), its statistic is at ``confirm``, or the detected change began
        (``onset``: a key event count) before the fit that followed the last input alarm,
        while the mix was moving. Flushes the buffer first."""
        self.flush()
        if self.drift_since is not None or self.statistic() >= self.config.confirm:
            return True
        return onset is not None and self.refitted_at is not None and onset <= self.refitted_at

    def statistic(self) -> float:
        """The input channel's largest CUSUM (0 before the fit), in reference sds."""
        return float(self._cusum.max()) if self._cusum is not None and len(self._cusum) else 0.0
