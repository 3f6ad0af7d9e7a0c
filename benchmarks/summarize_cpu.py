"""The current CPU figures, one row per machine, from the JSON files of
``benchmarks/cpu_schedules.py`` in ``benchmarks/results/``; with ``--update`` they replace
the block between ``<!-- current-cpu:begin -->`` and ``<!-- current-cpu:end -->`` at the top
of ``benchmarks/RESULTS.md`` (the history stays below it).

    python benchmarks/summarize_cpu.py                      # print the table
    python benchmarks/summarize_cpu.py --update benchmarks/RESULTS.md

Ratios are the peer's step time over jrnn's (above 1: jrnn is faster), each the
median over the rounds of one run, all in the same run.  ``jrnn train`` is the
variant jrnn picks on that CPU (the ``auto`` rule of ``jrnn/core/select.py``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- current-cpu:begin -->", "<!-- current-cpu:end -->"


def rows(paths):
    """One dict per JSON file (the newest run per CPU class and model last wins)."""
    latest = {}
    for path in sorted(paths):
        d = json.load(open(path))
        if "step_ms" not in d or "auto" not in d:
            continue
        key = (d["machine"].get("cpu_model"), d["cpu_class"], d["shape"])
        if key not in latest or d["time_utc"] > latest[key][1]["time_utc"]:
            latest[key] = (path, d)
    return [v for _, v in sorted(latest.items(), key=lambda kv: kv[1][1]["time_utc"])]


def table(found) -> str:
    head = ("| CPU (class) | shape | date | jrnn train (picks) | ms/step | × PyTorch | × Flax | "
            "float32 × PyTorch | best variant | file |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for path, d in found:
        ms = d["step_ms"]
        auto = d["auto"]["variant"]
        if auto not in ms:
            continue
        ratio = lambda peer, v: f"{ms[peer] / ms[v]:.2f}" if peer in ms and v in ms else "—"
        jrnn = {v: t for v, t in ms.items() if v.startswith("jrnn")}
        best = min(jrnn, key=jrnn.get)
        lines.append(
            f"| {d['machine'].get('cpu_model', '?')} ({d['cpu_class']}) | {d['shape']} | {d['time_utc'][:10]} | "
            f"{auto} | {ms[auto]:.1f} | **{ratio('torch', auto)}** | **{ratio('flax', auto)}** | "
            f"{ratio('torch', 'jrnn-f32')} | {best} ({ratio('torch', best)} × PyTorch) | "
            f"`{os.path.relpath(path, os.path.dirname(HERE))}` |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--update", help="a markdown file with the begin/end markers to rewrite")
    a = p.parse_args(argv)
    text = table(rows(glob.glob(os.path.join(a.results, "cpu-schedules-*.json"))))
    if not a.update:
        print(text)
        return 0
    doc = open(a.update).read()
    if BEGIN not in doc or END not in doc:
        print(f"{a.update}: no {BEGIN} ... {END} block to replace", file=sys.stderr)
        return 2
    before, rest = doc.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    with open(a.update, "w") as f:
        f.write(before + BEGIN + "\n" + text + "\n" + END + after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
