"""Figures for the diagnostics and the task sweeps (matplotlib, drawn off-screen).

Figures are made with ``matplotlib.figure.Figure`` and its Agg canvas, never
through ``pyplot``, so drawing one neither switches a notebook's backend nor
leaves a figure open in pyplot's registry.

matplotlib is imported inside each function, so ``import jrnn`` never needs
it (install it with ``pip install jrnn[plot]``).  Every function takes plain
arrays or the NamedTuples of :mod:`jrnn.diagnostics` / :mod:`jrnn.tasks`,
writes ``<path>.png`` (and ``<path>.svg`` with ``svg=True``) and returns the
paths written.  Figures are sized to stay well under 200 KB as PNG.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["gradient_flow_figure", "decay_figure", "training_figure", "sweep_figure",
           "loss_curves_figure", "task_gradients_figure", "learning_curve_figure"]

_COLORS = {"linear": "tab:gray", "tanh": "tab:blue", "sigmoid": "tab:orange", "relu": "tab:red",
           "lstm": "tab:green", "gru": "tab:purple", "lru": "tab:brown", "mingru": "tab:pink",
           "minlstm": "tab:olive", "rglru": "tab:cyan", "slstm": "navy", "mlstm": "magenta"}


def _subplots(ncols: int = 1, figsize=(7, 4.4)):
    """A new off-screen figure and its axes (``pyplot.subplots``'s return value)."""
    try:  # an optional dependency: imported when a figure is drawn
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'jrnn[plot]'") from None
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig, path: str, svg: bool) -> list[str]:
    base, ext = os.path.splitext(path)
    if ext.lower() not in (".png", ".svg", ""):
        raise ValueError(f"path must end in .png (or have no extension), got {path!r}")
    directory = os.path.dirname(os.path.abspath(base))
    os.makedirs(directory, exist_ok=True)
    out = [base + ".png"]
    fig.savefig(out[0], dpi=80)
    if svg:
        out.append(base + ".svg")
        fig.savefig(out[1])
    fig.clf()
    return out


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: str, svg: bool) -> list[str]:
    """Label one set of axes, add its grid and legend, and save the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, svg)


def _positive(y) -> np.ndarray:
    """Values a log axis can show: non-positive or non-finite ones (underflow, overflow) become gaps."""
    y = np.asarray(y, np.float64)
    return np.where(np.isfinite(y) & (y > 0), y, np.nan)


def gradient_flow_figure(
    curves: Mapping[str, tuple],
    path: str,
    *,
    bounds: Optional[Mapping[str, tuple]] = None,
    title: str = "Gradient flow through time",
    ylabel: str = "||dL_T / dh_t||  (relative to distance 0)",
    svg: bool = False,
) -> list[str]:
    """Norm against distance ``T - t`` on a log scale, one line per cell.

    Args:
      curves: ``{name: (distances int[K], norms float[K])}``.
      path: output file (``.png``).
      bounds: optional ``{name: (distances, bound)}`` drawn dashed in the
        same colour (e.g. :func:`jrnn.diagnostics.elman_jacobian_bound`).
      Values that underflowed to 0 are left out (the line stops).
    """
    fig, ax = _subplots(figsize=(7, 4.4))
    for name, (d, y) in curves.items():
        ax.semilogy(np.asarray(d), _positive(y), label=name, color=_COLORS.get(name), lw=1.8)
    for name, (d, y) in (bounds or {}).items():
        ax.semilogy(np.asarray(d), _positive(y), ls="--", lw=1.2, color=_COLORS.get(name),
                    label=f"{name} bound")
    ax.set_xlabel("distance T - t (steps)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return _save(fig, path, svg)


def decay_figure(curves: Mapping[str, object], path: str, *,
                 title: str = "Information decay", svg: bool = False) -> list[str]:
    """Two panels: ``||dh_T/dx_{T-1-k}||`` (log scale) and the probe accuracy with chance.

    Args:
      curves: ``{name: DecayCurve}`` from :func:`jrnn.diagnostics.information_decay`.
    """
    fig, (a1, a2) = _subplots(2, figsize=(9, 3.8))
    chance = None
    for name, c in curves.items():
        color = _COLORS.get(name)
        a1.semilogy(np.asarray(c.lags), _positive(c.sensitivity), label=name, color=color)
        a2.plot(np.asarray(c.lags), np.asarray(c.probe_accuracy), label=name, color=color, marker=".")
        chance = float(np.mean(np.asarray(c.chance)))
    if chance is not None:
        a2.axhline(chance, color="k", ls=":", lw=1, label="chance")
    a1.set_xlabel("lag k")
    a1.set_ylabel("||dh_T / dx_{T-1-k}||")
    a2.set_xlabel("lag k")
    a2.set_ylabel("probe accuracy for token_{T-1-k}")
    a2.set_ylim(0, 1.02)
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
    a2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, svg)


def training_figure(traces: Mapping[str, object], path: str, *, title: str = "Training",
                    svg: bool = False) -> list[str]:
    """Loss and pre-clip gradient norm per step; a cross marks the first non-finite step.

    Args:
      traces: ``{name: TrainingTrace}`` from :func:`jrnn.diagnostics.watch_training`.
    """
    fig, (a1, a2) = _subplots(2, figsize=(9, 3.8))
    for i, (name, tr) in enumerate(traces.items()):
        color = f"C{i}"
        steps = np.arange(len(tr.loss))
        # Non-finite values are left out of the lines; the cross marks where they start.
        loss, gnorm = _positive(tr.loss), _positive(tr.grad_norm)
        a1.semilogy(steps, loss, color=color, label=name, marker="." if len(steps) < 10 else None)
        a2.semilogy(steps, gnorm, color=color, label=name, marker="." if len(steps) < 10 else None)
        if tr.first_nonfinite is not None:
            s = tr.first_nonfinite.step
            for a in (a1, a2):
                a.axvline(s, color=color, ls=":", lw=1)
            seen = gnorm[: s + 1][np.isfinite(gnorm[: s + 1])]
            a2.plot([s], [seen.max() if seen.size else 1.0], "x", color=color, ms=9,
                    label=f"{name}: non-finite at step {s}")
    a1.set_xlabel("step")
    a1.set_ylabel("loss")
    a2.set_xlabel("step")
    a2.set_ylabel("gradient norm before clipping")
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, svg)


def sweep_figure(results: Sequence[object], path: str, *, solved_at: Optional[float] = None,
                 title: Optional[str] = None, svg: bool = False) -> list[str]:
    """Held-out metric against length, one line per cell, chance dotted, the solved level dashed.

    Args:
      results: :class:`jrnn.tasks.TaskResult` s of one task.
      solved_at: the task's threshold, drawn dashed (``task.solved_at``).
    """

    if not results:
        raise ValueError("no results to plot")
    fig, ax = _subplots(figsize=(7, 4.2))
    cells = list(dict.fromkeys(r.cell for r in results))
    for name in cells:
        best: dict = {}
        for r in results:
            if r.cell == name:
                best[r.length] = max(best.get(r.length, -1.0), r.metric)
        xs = sorted(best)
        ax.plot(xs, [best[x] for x in xs], marker="o", label=name, color=_COLORS.get(name))
    ax.axhline(float(np.mean([r.chance for r in results])), color="k", ls=":", lw=1, label="chance")
    if solved_at is not None:
        ax.axhline(solved_at, color="k", ls="--", lw=0.8, label="solved")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    return _finish(fig, ax, "length T (distance k for agreement)", "held-out metric",
                   title or f"{results[0].task}: where each cell stops learning", path, svg)


def loss_curves_figure(results: Sequence[object], path: str, *, baseline: Optional[float] = None,
                       batch_size: Optional[int] = None, title: Optional[str] = None,
                       svg: bool = False) -> list[str]:
    """Training loss against training progress, one line per run, the no-memory baseline dashed.

    Args:
      results: :class:`jrnn.tasks.TaskResult` s (their ``history``), e.g. every
        cell and seed of one task at one length.
      baseline: the loss of a model that remembers nothing (the copy task's
        ``10 log 8 / (T + 20)``), drawn as a dashed line.
      batch_size: when given, the x axis counts training sequences instead of steps.
    """
    if not results:
        raise ValueError("no results to plot")
    fig, ax = _subplots(figsize=(7, 4.2))
    scale = batch_size or 1
    seen: set = set()
    for r in results:
        if not r.history:
            continue
        steps, losses = zip(*[(h[0] * scale, h[1]) for h in r.history])
        ax.plot(steps, _positive(losses), color=_COLORS.get(r.cell), lw=1.2, alpha=0.85,
                label=None if r.cell in seen else r.cell)
        seen.add(r.cell)
    if baseline is not None:
        ax.axhline(baseline, color="k", ls="--", lw=1, label=f"no memory ({baseline:.3f})")
    ax.set_yscale("log")
    return _finish(fig, ax, "training sequences" if batch_size else "training steps",
                   "training loss", title or f"{results[0].task}: training loss", path, svg)


def task_gradients_figure(results: Sequence[object], path: str, *, title: Optional[str] = None,
                          svg: bool = False) -> list[str]:
    """``||dL/dh_t||`` against ``t``: before training (left) and after (right), one line per cell.

    Each curve is divided by its own largest value, so the plot shows how much
    of the loss's signal reaches the early steps.  ``results`` need
    ``evidence`` (``tasks.train_task(..., gradient_evidence=True)``); for each
    cell the first result with evidence is drawn.
    """
    drawn = {}
    for r in results:
        if getattr(r, "evidence", None) and r.cell not in drawn:
            drawn[r.cell] = r
    if not drawn:
        raise ValueError("no results with gradient evidence to plot")
    fig, axes = _subplots(2, figsize=(10, 4.2))
    for ax, when in zip(axes, ("untrained", "trained")):
        for name, r in drawn.items():
            g = np.asarray(r.evidence.get(when, []), np.float64)
            finite = g[np.isfinite(g)]
            if finite.size == 0 or finite.max() <= 0:
                continue
            ax.plot(np.arange(g.size), _positive(g / finite.max()), lw=1.2,
                    color=_COLORS.get(name), label=name)
        ax.set_yscale("log")
        ax.set_xlabel("step t")
        ax.set_title("before training" if when == "untrained" else "after training")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("||dL/dh_t|| / its largest value")
    axes[1].legend(fontsize=8)
    first = next(iter(drawn.values()))
    fig.suptitle(title or f"{first.task}, T = {first.length}: how much gradient reaches each step")
    fig.tight_layout()
    return _save(fig, path, svg)


def learning_curve_figure(runs: Mapping[str, Sequence[dict]], path: str, *,
                          title: Optional[str] = None, svg: bool = False) -> list[str]:
    """Runs side by side: train (solid) and validation (dashed) perplexity per epoch, and the
    training loss every logged window against the step.

    Args:
      runs: ``{name: records}``, each a run's ``metrics.jsonl`` records
        (:func:`jrnn.training.rundir.read_metrics`; a run without the file gives its
        ``summary.json`` history as ``"epoch"`` records).
    """
    fig, (a1, a2) = _subplots(2, figsize=(10, 4.0))
    for i, (name, records) in enumerate(runs.items()):
        color = f"C{i % 10}"
        epochs = [r for r in records if r.get("kind") == "epoch"]
        x = [r["epoch"] for r in epochs]
        for key, style, what in (("train_ppl", "-", "train"), ("valid_ppl", "--", "valid")):
            y = _positive([np.nan if r.get(key) is None else r[key] for r in epochs])
            a1.plot(x, y, style, color=color, marker="o" if len(x) < 30 else None, ms=3,
                    label=f"{name} {what}")
        test = [r["test_ppl"] for r in records if r.get("kind") == "test" and r.get("test_ppl") is not None]
        if test:
            shown = f"{test[-1]:.1f}" if test[-1] < 1e6 else f"{test[-1]:.1e}"  # a diverged run's fits too
            a1.plot([x[-1] if x else 0], [test[-1]], "*", color=color, ms=9, label=f"{name} test {shown}")
        windows = [r for r in records if r.get("kind") == "train"]
        a2.plot([r["step"] for r in windows], _positive([np.nan if r.get("loss") is None else r["loss"]
                                                          for r in windows]),
                color=color, lw=1, label=name)
    from matplotlib.ticker import MaxNLocator

    a1.xaxis.set_major_locator(MaxNLocator(integer=True))
    a1.set_xlabel("epoch")
    a1.set_ylabel("perplexity")
    a2.set_xlabel("step (updates)")
    a2.set_ylabel("training loss of the window (nats / token)")
    for a in (a1, a2):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(title or "Learning curves")
    fig.tight_layout()
    return _save(fig, path, svg)
