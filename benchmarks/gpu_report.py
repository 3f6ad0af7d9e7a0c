"""Pack the parts of ``benchmarks/gpu_check.sh`` into one table and one JSON.

Reads the work folder the script fills (``status.tsv``, ``devices.txt``,
``check.json``, ``peers-<shape>.json``, ``<part>.log``, ``run-<preset>/``)
and writes a handful of files into the output folder:

* ``gpu_table.txt`` -- THE table: one row per shape, one column per
  implementation, each cell the speed (tokens/s for the LM train steps, ms
  per forward+backward for the single-layer shapes) and, in parentheses, the
  speed relative to PyTorch cuDNN float32 (its step time / this step time:
  > 1 is faster than PyTorch f32); then the time-to-accuracy runs, the
  weight-conversion check, and the status of every part;
* ``gpu_results.json`` -- everything measured, machine-readable;
* ``logs.txt`` -- the parts' logs, one after another (long ones trimmed);
* ``devices.txt`` -- GPU, versions, CPU.

Standard library only, so it runs in a moment after every part and whatever
failed before it.  ``python benchmarks/gpu_report.py WORK OUT [--budget S]``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Optional

# Column order; jrnn[u=k] columns are added for every unroll factor found.
FIXED_COLS = [("torch f32 (TF32 allowed)", "torch"), ("torch f32 full", "torch-f32-full"),
              ("torch fp16", "torch-fp16"), ("jax cuDNN", "jax-cudnn"),
              ("flax", "flax"), ("equinox", "equinox")]
BASELINE = "torch"
TARGET_PPL, TARGET_S = 114.5, 30.0
LOG_HEAD, LOG_TAIL, LOG_MAX_LINE = 60, 240, 2000
ANCHORS = {"lstm-1024-768": "cuDNN persistent fp16 LSTM on an H100 (NX-AI/flashrnn): "
                            "2.01 ms forward, 5.19 ms forward+backward"}


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_status(work: Path) -> list[dict]:
    """``status.tsv``: part, limit_s, rc, seconds -- one line per finished part."""
    parts = []
    try:
        lines = (work / "status.tsv").read_text().splitlines()
    except OSError:
        return parts
    for line in lines:
        f = line.split("\t")
        if len(f) < 4:
            continue
        name, limit, rc, secs = f[:4]
        rec = {"part": name, "limit_s": _num(limit), "rc": _num(rc), "seconds": _num(secs)}
        rc_v = rec["rc"]
        rec["status"] = ("skipped" if rc == "skip" else
                         "ok" if rc_v == 0 else
                         "timed out" if rc_v in (124, 137) else
                         f"exit {rc}")
        if len(f) > 4 and f[4]:
            rec["note"] = f[4]
        parts.append(rec)
    return parts


def _num(s: str):
    try:
        v = float(s)
        return int(v) if v.is_integer() else v
    except ValueError:
        return None


# --------------------------------------------------------------------------
# The table.


def _impl_columns(shapes: list[dict]) -> list[tuple[str, str]]:
    """The fixed columns (those of gpu_check.sh: unroll 1 and 8, autodiff at 8) and any other
    implementation found, so that a missing result shows as a cell, not a missing column."""
    impls = [r["impl"] for s in shapes for r in s.get("rows", [])]
    unrolls = sorted({1, 8} | {int(m.group(1)) for i in impls
                               if (m := re.fullmatch(r"jrnn\[u=(\d+)\]", i))})
    autodiff = sorted({"jrnn[u=8,autodiff]"} | {i for i in impls
                                                if re.fullmatch(r"jrnn\[u=\d+,autodiff\]", i)})
    cols = [c for c in FIXED_COLS if c[1] in impls or c[1] != "equinox"]
    for a in autodiff:
        u = re.search(r"u=(\d+)", a).group(1)
        cols.append((f"jrnn autodiff u={u}", a))
    cols += [(f"jrnn u={u}", f"jrnn[u={u}]") for u in unrolls]
    cols += [("jrnn Pallas", "jrnn-pallas"), ("jrnn Pallas bf16", "jrnn-pallas-bf16"),
             ("jrnn persistent", "jrnn-persistent"), ("jrnn persistent bf16", "jrnn-persistent-bf16"),
             ("jrnn f32 full", "jrnn-f32-full"),
             ("jrnn cuDNN", "jrnn-cudnn")]
    return cols


def _speed(shape: dict, row: dict) -> str:
    if shape.get("mode") == "lm":
        tok = shape["B"] * shape["T"] / row["step_s"]
        return f"{tok / 1e3:.1f}k" if tok < 1e6 else f"{tok / 1e6:.2f}M"
    return f"{row['step_s'] * 1e3:.2f}ms"


def _cell(shape: dict, impl: str, cut: bool) -> str:
    rows = {r["impl"]: r for r in shape.get("rows", [])}
    r = rows.get(impl)
    if r is None:
        return "t/o" if cut else "-"
    if "skipped" in r:
        return "n/a"
    if "error" in r:
        return "err"
    base = rows.get(BASELINE)
    text = _speed(shape, r)
    if base and "step_s" in base and impl != BASELINE:
        text += f" ({base['step_s'] / r['step_s']:.2f})"
    return text


def build_table(shapes: list[dict], cut_shapes: set) -> tuple[list[str], list[dict]]:
    cols = _impl_columns(shapes)
    width = max(14, *(len(c[0]) for c in cols))
    head = f"{'shape':15s} {'unit':6s} " + " ".join(f"{c[0]:>{width}s}" for c in cols)
    lines = [head, "-" * len(head)]
    table = []
    for s in shapes:
        cut = s["shape"] in cut_shapes
        unit = {"lm": "tok/s", "rec": "ms"}.get(s.get("mode"), "")
        cells = [_cell(s, impl, cut) for _, impl in cols]
        lines.append(f"{s['shape']:15s} {unit:6s} " + " ".join(f"{c:>{width}s}" for c in cells))
        table.append({"shape": s["shape"], "unit": unit, **{c[0]: v for c, v in zip(cols, cells)}})
    return lines, table


def shape_notes(shapes: list[dict], parts: dict) -> list[str]:
    notes = []
    for s in shapes:
        if not s.get("rows"):
            q = parts.get(f"peers-{s['shape']}", {})
            notes.append(f"{s['shape']}: no result (part {q.get('status', 'not run')})")
            continue
        desc = (f"{s['shape']}: {s.get('cell')} B{s.get('B')} T{s.get('T')} H{s.get('H')} "
                f"L{s.get('L')}" + (f" V{s.get('V')} train step" if s.get("mode") == "lm"
                                    else " forward+backward of one recurrent stack"))
        notes.append(desc)
        fwd = [f"{r['impl']} {r['fwd_step_s'] * 1e3:.2f}" for r in s.get("rows", [])
               if "fwd_step_s" in r]
        if fwd:
            notes.append("   forward only (ms): " + ", ".join(fwd))
        if s["shape"] in ANCHORS:
            notes.append("   anchor: " + ANCHORS[s["shape"]])
        comp = [f"{r['impl']} {r['compile_s']:.1f}" for r in s.get("rows", []) if "compile_s" in r]
        if comp:
            notes.append("   compile / first step (s): " + ", ".join(comp))
        # Like with like: what each PyTorch row ran (TF32 settings, cuDNN's algorithm by
        # PyTorch's own rule) and the precision of the jrnn rows.
        for r in s.get("rows", []):
            if "cudnn_algo_forward" in r:
                notes.append(f"   {r['impl']}: {r.get('dtype')}, cuDNN TF32 "
                             f"{r.get('cudnn_allow_tf32')}, cuBLAS TF32 "
                             f"{r.get('matmul_allow_tf32')}, cuDNN algorithm forward "
                             f"{r['cudnn_algo_forward']} / backward {r['cudnn_algo_backward']}")
            elif r.get("matmul_precision"):
                notes.append(f"   {r['impl']}: float32 matmuls at {r['matmul_precision']} "
                             "precision (no TF32)")
        for r in s.get("rows", []):
            if "error" in r:
                notes.append(f"   err {r['impl']}: {r['error'][:300]}")
    return notes


# --------------------------------------------------------------------------
# jrnn train runs.

EPOCH_RE = re.compile(r"^epoch\s+(\d+) \| lr (\S+) \| train ppl\s+(\S+) \| valid ppl\s+(\S+)( \*)?"
                      r" \| ([\d.]+)k tok/s \| (\d+)s")
TEST_RE = re.compile(r"^test ppl (\S+) \((\d+) tokens, best valid (\S+)\) \| wall (\d+)s")
MODEL_RE = re.compile(r"^model: (.*)$")


def read_train(work: Path, part: str, preset: str, status: Optional[dict]) -> dict:
    log = work / f"{part}.log"
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {"preset": preset, "ran": False}
    res: dict = {"preset": preset, "ran": True, "epochs": []}
    for line in text.splitlines():
        if m := EPOCH_RE.match(line):
            res["epochs"].append({"epoch": int(m.group(1)), "lr": float(m.group(2)),
                                  "train_ppl": float(m.group(3)), "valid_ppl": float(m.group(4)),
                                  "tokens_per_s": float(m.group(6)) * 1e3,
                                  "seconds": int(m.group(7))})
        elif m := TEST_RE.match(line):
            res.update(test_ppl=float(m.group(1)), test_tokens=int(m.group(2)),
                       best_valid_ppl=float(m.group(3)), cli_wall_s=int(m.group(4)))
        elif m := MODEL_RE.match(line):
            res["model"] = m.group(1)
    summary = _read_json(work / f"run-{preset}" / "summary.json")
    if summary:
        res["summary"] = {k: summary.get(k) for k in ("test_ppl", "best_valid_ppl",
                                                       "wall_seconds", "settings", "data")}
        res["cli_wall_s"] = summary.get("wall_seconds", res.get("cli_wall_s"))
        if summary.get("test_ppl") is not None:
            res["test_ppl"] = summary["test_ppl"]
        if summary.get("history"):
            res["epochs"] = summary["history"]
    res["process_wall_s"] = (status or {}).get("seconds")  # measured by gpu_check.sh
    res["limit_s"] = (status or {}).get("limit_s")
    res["status"] = (status or {}).get("status", "not run")
    res["finished"] = "test_ppl" in res
    if res["finished"]:
        w = res["process_wall_s"]
        res["target"] = f"test ppl <= {TARGET_PPL} in <= {TARGET_S:.0f} s"
        res["target_met"] = bool(res["test_ppl"] <= TARGET_PPL and w is not None and w <= TARGET_S)
    return res


def train_lines(t: dict) -> list[str]:
    name = f"jrnn train --preset {t['preset']} --fused-epoch"
    if not t.get("ran"):
        return [f"{name}: not run ({t.get('status', 'no log')})"]
    eps = t.get("epochs") or []
    last = eps[-1] if eps else None
    rate = (f", {last['tokens_per_s'] / 1e3:.1f}k tok/s in epoch {last['epoch']}" if last
            and last.get("tokens_per_s") else "")
    if t.get("finished"):
        w = t.get("process_wall_s")
        wtxt = "?" if w is None else f"{w:.1f}"
        return [f"{name}: test ppl {t['test_ppl']:.2f} in {wtxt} s wall (process; "
                f"{t.get('cli_wall_s', 0):.0f} s from the CLI's start, after data loading), "
                f"{len(eps)} epochs{rate}; target ppl <= {TARGET_PPL} in <= {TARGET_S:.0f} s: "
                f"{'MET' if t.get('target_met') else 'not met'}"]
    where = f"after {len(eps)} epochs" if eps else "before the first epoch ended"
    best = min((e["valid_ppl"] for e in eps), default=None)
    btxt = f", best valid ppl {best:.2f}" if best is not None else ""
    return [f"{name}: {t.get('status')} at its {t.get('limit_s')} s limit {where}{btxt}{rate} "
            f"(no test ppl)"]


# --------------------------------------------------------------------------


def _check_lines(check: Optional[dict]) -> list[str]:
    if not check:
        return ["weight check (benchmarks/jax_cudnn.py): no result"]
    if "check" not in check:
        return [f"weight check: failed: {check.get('error')}"]
    c = check["check"]
    out = [f"weight check jrnn LSTM -> jax.experimental.rnn ({c['backend']}): max abs diff "
           f"{c['max_abs_diff']:.2e} -> {'ok' if c['ok'] else 'MISMATCH'} (lstm_ref y "
           f"{c['ref_y']:.1e}, grads {max(c['ref_grad_params'], c['ref_grad_xs']):.1e})"]
    cud = {k: v for k, v in c.items() if k.startswith("cudnn_")}
    if "cudnn_note" in cud:
        out.append("   " + cud.pop("cudnn_note"))
    if cud:
        out.append("   cuDNN vs jrnn: " + ", ".join(
            f"{k[6:]} {v:.1e}" if isinstance(v, float) else f"{k[6:]} {v}" for k, v in cud.items()))
    if "check_large" in check:
        out.append(f"   H=768 B16 T16: max abs diff {check['check_large']['max_abs_diff']:.2e}")
    if check.get("backends"):
        verdicts = check.get("verdicts", {})
        out.append("   jrnn methods vs its scan (values, grads; checked before any timing): " + ", ".join(
            (f"{k} {v:.1e}" + (f" {verdicts[k]}" if k in verdicts else ""))
            if isinstance(v, float) else f"{k} FAILED ({v[:120]})"
            for k, v in check["backends"].items()))
        failed = [k for k, v in verdicts.items() if v != "ok"]
        if failed:
            out.append("   FAILED on this device (their timings below do not count): "
                       + ", ".join(failed))
    if "emulated" in check:
        out.append(f"   jax-cudnn runner on a CPU emulation of cuDNN (smoke): {check['emulated']}")
    return out


def _trim_log(text: str) -> str:
    lines = [ln if len(ln) <= LOG_MAX_LINE else ln[:LOG_MAX_LINE] + " ...[line trimmed]"
             for ln in text.splitlines()]
    if len(lines) > LOG_HEAD + LOG_TAIL:
        cut = len(lines) - LOG_HEAD - LOG_TAIL
        lines = lines[:LOG_HEAD] + [f"... [{cut} lines trimmed] ..."] + lines[-LOG_TAIL:]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--budget", type=float, default=None, help="the script's time budget, s")
    p.add_argument("--elapsed", type=float, default=None, help="seconds used so far")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--final", action="store_true", help="the last call: print the table")
    args = p.parse_args(argv)
    work, out = args.work, args.out
    out.mkdir(parents=True, exist_ok=True)

    parts = read_status(work)
    status = {q["part"]: q for q in parts}
    shapes, machine, versions = [], None, None
    cut_shapes = set()
    for q in parts:
        if not q["part"].startswith("peers-"):
            continue
        shape_name = q["part"][len("peers-"):]
        res = _read_json(work / f"{q['part']}.json")
        if q["status"] == "timed out" or (q["status"] != "ok" and res
                                          and not res.get("complete")):
            cut_shapes.add(shape_name)
        if res and res.get("results"):
            shapes += res["results"]
            machine = machine or res.get("machine")
            versions = versions or res.get("versions")
        else:
            shapes.append({"shape": shape_name, "rows": [], "mode": None})
    check = _read_json(work / "check.json")
    trains = [read_train(work, q["part"], q["part"][len("train-"):], q)
              for q in parts if q["part"].startswith("train-")]

    lines = ["jrnn GPU check" + (" -- SMOKE (tiny shapes on this machine; timings mean nothing)"
                                 if args.smoke else ""), ""]
    devices = work / "devices.txt"
    if devices.exists():
        lines += [ln for ln in devices.read_text(errors="replace").splitlines()
                  if ln.strip()][:12] + [""]
    if shapes:
        tl, table = build_table(shapes, cut_shapes)
        lines += tl
        lines += ["", "Cell: tokens/s (LM train step: embedding -> LSTM layers -> softmax over V, "
                      "clip 5, SGD) or ms per forward+backward (single-layer shapes); "
                      "(r) = PyTorch cuDNN f32 step time / this step time, > 1 = faster than "
                      "PyTorch f32. n/a: not applicable (see notes), err: failed (logs.txt), "
                      "t/o: its part hit its time limit first, -: not run.",
                  "jrnn u=k: hand-written backward passes (jrnn.core.backward), lax.scan unroll k; "
                  "jrnn autodiff: custom_vjp=False; torch fp16: .half() model, loss in f32; "
                  "jax cuDNN: jax.experimental.rnn.lstm, f32; the f32 columns run at their "
                  "library's default precision (PyTorch's cuDNN allows TF32, XLA may use it) "
                  "except the 'f32 full' ones (PyTorch allow_tf32=False, jrnn "
                  "default_matmul_precision('highest')); "
                  "jrnn Pallas: one-block Mosaic GPU kernels (jrnn.core.mosaic; TF32 operands, "
                  "bf16: bf16 operands, f32 state); jrnn persistent: multi-block kernels with a "
                  "grid barrier (jrnn.core.persistent); "
                  "jrnn cuDNN: method=\"cudnn\" (jax.experimental.rnn with jrnn's params).", ""]
        lines += shape_notes(shapes, status)
    else:
        table = []
        lines.append("no peer results")
    lines.append("")
    for t in trains:
        lines += train_lines(t)
    lines += _check_lines(check)
    lines.append("")
    lines.append("parts (limit s / used s / status):")
    for q in parts:
        lines.append(f"   {q['part']:24s} {q['limit_s']!s:>5} {q['seconds']!s:>7}  {q['status']}"
                     + (f" ({q['note']})" if q.get("note") else ""))
    if args.elapsed is not None:
        lines.append(f"total so far: {args.elapsed:.0f} s of a {args.budget or 0:.0f} s budget")
    text = "\n".join(lines) + "\n"
    (out / "gpu_table.txt").write_text(text)

    results = {"smoke": args.smoke, "budget_s": args.budget, "elapsed_s": args.elapsed,
               "parts": parts, "table": table, "machine": machine, "versions": versions,
               "check": check, "train": {t["preset"]: t for t in trains}, "shapes": shapes}
    (out / "gpu_results.json").write_text(json.dumps(results, indent=1, default=_json_default))

    logs = []
    for q in parts:
        log = work / f"{q['part']}.log"
        body = _trim_log(log.read_text(errors="replace")) if log.exists() else "(no log)"
        logs.append(f"===== {q['part']} (limit {q['limit_s']} s, used {q['seconds']} s, "
                    f"{q['status']}) =====\n{body}\n")
    (out / "logs.txt").write_text("\n".join(logs))
    if devices.exists():
        shutil.copyfile(devices, out / "devices.txt")
    if args.final:
        print(text, end="")
    return 0


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return str(x)


if __name__ == "__main__":
    sys.exit(main())
