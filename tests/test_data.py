"""Vocabulary, corpora, batching and the downloader (local files only)."""

import hashlib
import os

import numpy as np
import pytest

from jrnn import data as D


def test_vocab_ptb_convention():
    v = D.Vocabulary.build(["a b b", "c b"], max_size=4)
    assert v.itos[:2] == ["<eos>", "<unk>"] and v.itos[2] == "b" and len(v) == 4
    assert v.encode("b z") == [v.stoi["b"], v.unk_id, v.eos_id]
    assert v.unknown("b z y") == ["z", "y"]
    assert D.Vocabulary.from_dict(v.to_dict()) == v
    assert D.Vocabulary.build(["a a b"], min_freq=2).itos == ["<eos>", "<unk>", "a"]


def test_encode_batch_pads_and_reports_lengths():
    v = D.Vocabulary.build(["john is driving a car"])
    tokens, lengths = v.encode_batch(["john is driving a car", "a car"])
    assert tokens.shape == (2, 7) and list(lengths) == [7, 4]
    assert tokens[0, 0] == v.eos_id and tokens[0, 6] == v.eos_id
    with pytest.raises(TypeError):
        v.encode_batch("one string")


def test_char_level_vocab():
    v = D.Vocabulary.build(["hello\n"], level="char")
    assert v.decode(v.encode("hole")) == "hole"
    assert v.encode("x") == [v.unk_id]


def test_batchify_and_windows_cover_the_stream():
    ids = np.arange(103)
    streams = D.batchify(ids, 4)
    assert streams.shape == (4, 25)
    np.testing.assert_array_equal(streams[1], np.arange(25, 50))
    wins = list(D.bptt_windows(streams, 7))
    assert len(wins) == D.num_windows(streams, 7) == 4
    x = np.concatenate([w[0] for w in wins], 1)
    y = np.concatenate([w[1] for w in wins], 1)
    np.testing.assert_array_equal(x, streams[:, :-1])
    np.testing.assert_array_equal(y, streams[:, 1:])
    with pytest.raises(D.DataError, match="cannot fill"):
        D.batchify(np.arange(5), 4)


def _ptb_dir(tmp_path, train="a b c\nb c d\n" * 20):
    for split, text in [("train", train), ("valid", "a b c d\n"), ("test", "d c b a\n")]:
        (tmp_path / f"toy.{split}.txt").write_text(text)
    return str(tmp_path)


def test_load_ptb_dir_builds_vocab_from_train_only(tmp_path):
    path = _ptb_dir(tmp_path)
    (tmp_path / "toy.valid.txt").write_text("a b zebra\n")
    c = D.load_corpus(path)
    assert "zebra" not in c.vocab
    assert list(c.valid) == c.vocab.encode("a b zebra")
    assert len(c.train) == 20 * 8


def test_bad_files_get_one_line_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\t\n")
    with pytest.raises(D.DataError, match="empty or whitespace-only"):
        D.load_corpus(str(empty))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok text \xff\xfe more")
    with pytest.raises(D.DataError, match="not UTF-8"):
        D.load_corpus(str(bad))
    with pytest.raises(D.DataError, match="no such file or directory"):
        D.load_corpus(str(tmp_path / "missing"))
    (tmp_path / "d").mkdir()
    with pytest.raises(D.DataError, match=r"no \*\.train\.txt"):
        D.load_corpus(str(tmp_path / "d"))
    short = tmp_path / "short.txt"
    short.write_text("ab")
    with pytest.raises(D.DataError, match="too short"):
        D.load_corpus(str(short), level="char")


def test_single_file_split_by_fraction(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("abcdefghij" * 100)
    c = D.load_corpus(str(f), level="char")
    assert len(c.train) == 900 and len(c.valid) == 50 and len(c.test) == 50


def test_builtin_corpus_is_deterministic_and_sensible():
    a, b = D.builtin_lines(50, seed=3), D.builtin_lines(50, seed=3)
    assert a == b and a != D.builtin_lines(50, seed=4)
    c = D.builtin_corpus(2000)
    assert "car" in c.vocab and "cat" in c.vocab and len(c.valid) > 0


def test_download_verifies_checksum_and_caches(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("hello world\n")
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    files = {"x.txt": (src.as_uri(), md5)}
    out = D.download("toy", str(tmp_path / "cache"), files=files)
    assert open(os.path.join(out, "x.txt")).read() == "hello world\n"
    src.unlink()  # cached: no second fetch
    assert D.download("toy", str(tmp_path / "cache"), files=files) == out
    with pytest.raises(D.DataError, match="checksum mismatch"):
        D.download("toy2", str(tmp_path / "cache2"),
                   files={"x.txt": ((tmp_path / "cache" / "toy" / "x.txt").as_uri(), "0" * 32)})


def test_concurrent_downloads_fetch_once(tmp_path, monkeypatch):
    """Processes of one run asking at once: one fetches, the others wait and find the cache."""
    import io
    import threading
    import time
    import urllib.request

    fetched = []

    class Slow(io.BytesIO):
        def __enter__(self):
            return self

    def fake_urlopen(url, timeout):
        fetched.append(url)
        time.sleep(0.3)  # long enough for the other thread to arrive mid-download
        return Slow(b"same text\n")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    files = {"x.txt": ("http://example.invalid/x.txt", None)}
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        D.download("toy", str(tmp_path), files=files))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert fetched == ["http://example.invalid/x.txt"]
    assert open(os.path.join(results[0], "x.txt")).read() == "same text\n"


def test_download_without_network_fails_fast_with_advice(tmp_path):
    files = {"x.txt": ("http://127.0.0.1:9/nothing.txt", None)}
    with pytest.raises(D.DataError, match="pass it with --data"):
        D.download("toy", str(tmp_path), files=files, timeout=2)
    with pytest.raises(D.DataError, match="unknown corpus"):
        D.download("nope", str(tmp_path))
