"""docs/guide.md runs: its ```python blocks, in order, print what its ```text blocks show.

Each ```python block may be followed by a ```text block holding the output it
prints.  Words must match exactly; numbers must match to the precision they
are written with (``0.53`` means within 0.015, ``1.2e-20`` within 1.5e-21), so the
guide stays true on other CPUs and library versions without hiding real
changes.  ``python tests/test_docs.py`` prints what each block prints now.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import re
import sys
import time

GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "guide.md"
FENCE = re.compile(r"^```(\w*)\s*\n(.*?)^```\s*$", re.S | re.M)
TIMES: list = []  # seconds per block of the last run
NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def blocks(text: str) -> list[tuple[str, str | None]]:
    """``(python_source, expected_output or None)`` for every python block, in order."""
    fences = [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]
    out = []
    for i, (lang, body) in enumerate(fences):
        if lang != "python":
            continue
        nxt = fences[i + 1] if i + 1 < len(fences) else None
        out.append((body, nxt[1] if nxt and nxt[0] == "text" else None))
    return out


def run(text: str) -> list[tuple[str, str | None, str]]:
    """Run the blocks in one namespace: ``(source, expected, printed)`` for each."""
    namespace: dict = {"__name__": "guide"}
    results = []
    for source, expected in blocks(text):
        buf = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            exec(compile(source, str(GUIDE), "exec"), namespace)
        results.append((source, expected, buf.getvalue()))
        TIMES.append(time.perf_counter() - start)
    return results


def _tokens(s: str) -> list[str]:
    return re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?|[^\s\d]+|\d+", s)


def _close(want: str, got: str) -> bool:
    if not (NUMBER.match(want) and NUMBER.match(got)):
        return want == got
    # Equal up to 1.5 units of the last digit shown: "0.53" +- 0.015, "1.6e-01" +- 0.015.
    mantissa, _, exponent = want.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return abs(float(want) - float(got)) <= 1.5 * 10.0 ** (int(exponent or 0) - decimals)


def outputs_match(expected: str, printed: str) -> bool:
    """Same words in the same order; numbers equal to the shown precision."""
    want, got = _tokens(expected), _tokens(printed)
    return len(want) == len(got) and all(_close(w, g) for w, g in zip(want, got))


def test_matcher_is_strict_enough():
    assert outputs_match("loss 0.53 True", "loss 0.5349 True\n")
    assert not outputs_match("loss 0.53 True", "loss 0.56 True")
    assert not outputs_match("loss 0.53 True", "loss 0.53 False")
    assert outputs_match("[1.2e-20 3.0e-01]", "[1.23e-20 2.9e-01]")
    assert not outputs_match("4e-04", "7e-04")
    assert not outputs_match("1.2e-20", "1.2e-10")
    assert not outputs_match("(4, 1, 3)", "(4, 1, 3, 1)")


def test_guide_runs_and_prints_what_it_shows():
    results = run(GUIDE.read_text())
    assert len(results) >= 6, "the guide should walk through the lecture in several steps"
    assert sum(expected is not None for _, expected, _ in results) >= 6
    for source, expected, printed in results:
        if expected is None:
            assert printed == "", f"block prints but the guide shows no output:\n{source}"
        else:
            assert outputs_match(expected, printed), (
                f"\n--- block ---\n{source}\n--- guide shows ---\n{expected}\n--- prints ---\n{printed}"
            )


def test_comparison_cites_tests_that_exist():
    """Every ``test_file.py::test_name`` the feature table cites is a real test."""
    table = (GUIDE.parent / "comparison.md").read_text()
    tests_dir = pathlib.Path(__file__).resolve().parent
    cited = re.findall(r"(test_\w+\.py)(?:::(test_\w+))?", table)
    assert len(cited) >= 10
    for filename, name in cited:
        path = tests_dir / filename
        assert path.exists(), f"comparison.md cites missing {filename}"
        if name:
            assert re.search(rf"^def {name}\(", path.read_text(), re.M), f"no {filename}::{name}"


if __name__ == "__main__":  # show what each block prints now
    sys.path.insert(0, str(GUIDE.parents[1]))
    import jax

    jax.config.update("jax_enable_x64", True)
    for i, (source, expected, printed) in enumerate(run(GUIDE.read_text())):
        status = "ok" if expected is None and not printed or expected and outputs_match(expected, printed) else "DIFF"
        print(f"=== block {i} [{status}] {TIMES[i]:.1f} s\n{source.strip()}\n--- prints:\n{printed}")
