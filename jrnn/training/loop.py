"""Epoch-level training and evaluation over a token stream (truncated BPTT).

The pieces the command line strings together, usable from Python too: an
optimizer whose learning rate lives in its state (so it is checkpointed), the
Zaremba et al. learning-rate schedule, one epoch of windows with the carry
passed from window to window, and perplexity over a whole split.
"""

from __future__ import annotations

import math
import time
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jrnn.core import names
from jrnn.data import batchify, bptt_windows, num_windows
from jrnn.models.lm import LanguageModel
from jrnn.training.step import TrainState, make_eval_step

__all__ = [
    "OPTIMIZERS",
    "make_optimizer",
    "set_learning_rate",
    "get_learning_rate",
    "zaremba_lr",
    "EpochStats",
    "train_epoch",
    "evaluate",
    "train_epoch_fused",
]


# The optimizers a configuration (and ``jrnn train --optimizer``) can name.  From
# Python, pass any optax.GradientTransformation to fit instead.
OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam, "adamw": optax.adamw}
names.agree("OPTIMIZERS", OPTIMIZERS)


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """``OPTIMIZERS[name]`` with the learning rate injected into the state (so it is checkpointed
    and the per-epoch schedule can set it)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    return optax.inject_hyperparams(OPTIMIZERS[name])(learning_rate=learning_rate)


def set_learning_rate(state: TrainState, lr: float) -> TrainState:
    """The state with the learning rate that ``optax.inject_hyperparams`` keeps in it set to ``lr``."""
    old = optax.tree_utils.tree_get(state.opt_state, "learning_rate")
    new = jnp.asarray(lr, jnp.asarray(old).dtype)
    return state._replace(opt_state=optax.tree_utils.tree_set(state.opt_state, learning_rate=new))


def get_learning_rate(state: TrainState) -> float:
    """The learning rate held in the optimizer state."""
    return float(optax.tree_utils.tree_get(state.opt_state, "learning_rate"))


def zaremba_lr(base_lr: float, decay: float, decay_start: int, epoch: int) -> float:
    """Zaremba et al.'s schedule: ``base_lr`` for ``decay_start`` epochs, then times ``decay`` per epoch.

    ``epoch`` counts from 0.
    """
    return base_lr * decay ** max(epoch + 1 - decay_start, 0)


class EpochStats(NamedTuple):
    """What one epoch of training measured (over the windows whose loss was finite)."""

    nll: float  # mean per-token cross-entropy (NaN when no window counted)
    perplexity: Optional[float]  # None when no window counted: nothing to report
    tokens: int
    seconds: float
    nonfinite_windows: int
    max_grad_norm: float


def _stats(total_nll: float, total_tok: int, seconds: float, bad: int, max_norm: float) -> EpochStats:
    if total_tok == 0:
        return EpochStats(float("nan"), None, 0, seconds, bad, max_norm)
    nll = total_nll / total_tok
    return EpochStats(nll, math.exp(min(nll, 700.0)), total_tok, seconds, bad, max_norm)


def train_epoch(
    step: Callable,
    model: LanguageModel,
    state: TrainState,
    streams: np.ndarray,
    bptt: int,
    *,
    start_window: int = 0,
    carry=None,
    totals: Optional[tuple] = None,
    on_window: Optional[Callable[[int, int, dict, float], None]] = None,
    should_stop: Optional[Callable[[int, TrainState, object, dict, tuple], bool]] = None,
):
    """Run ``step`` over all BPTT windows of ``streams: int[B, N]``.

    The carry of each window starts the next; ``carry`` is the one to start
    window ``start_window`` from (``None``: zeros, right at the start of an
    epoch), and ``totals`` the running sums of the windows before it
    (``(nll, tokens, non-finite windows, max gradient norm)``, as
    ``should_stop`` receives them), so a resumed epoch reports what the whole
    epoch would have.  ``on_window(i, n, metrics, tokens_per_s)`` is called
    after each window with host-side floats (the only sync point per window);
    ``should_stop(i, state, carry, metrics, totals)`` may end the epoch early,
    and may save ``state``, ``carry`` and ``totals`` (those after window ``i``).

    Returns ``(state, stats, next_window, carry)``: ``next_window`` is where a
    resumed run should start (``n`` when the epoch ran to its end) and
    ``carry`` the carry to start it from.
    """
    B = streams.shape[0]
    n = num_windows(streams, bptt)
    if carry is None:
        carry = model.initial_carry(B)
    total_nll, total_tok, bad, max_norm = totals if totals is not None else (0.0, 0, 0, 0.0)
    t0 = time.perf_counter()
    i = start_window
    for i, (x, y) in enumerate(bptt_windows(streams, bptt)):
        if i < start_window:
            continue
        state, carry, m = step(state, jnp.asarray(x), jnp.asarray(y), carry)
        leaves = np.asarray(m.pop("finite_leaves")) if "finite_leaves" in m else None
        m = {k: float(v) for k, v in m.items()}
        if leaves is not None:
            m["finite_leaves"] = leaves
        tok = int(m["num_tokens"])
        if m["finite"]:
            total_nll += m["token_nll"] * tok
            total_tok += tok
        else:
            bad += 1
        max_norm = max(max_norm, m["grad_norm"]) if math.isfinite(m["grad_norm"]) else max_norm
        if on_window is not None:
            on_window(i, n, m, total_tok / max(time.perf_counter() - t0, 1e-9))
        if should_stop is not None and should_stop(i, state, carry, m,
                                                   (total_nll, total_tok, bad, max_norm)):
            i += 1
            break
    else:
        i = n
    return state, _stats(total_nll, total_tok, time.perf_counter() - t0, bad, max_norm), i, carry


def evaluate(model: LanguageModel, params, ids: np.ndarray, *, batch_size: int = 10,
             bptt: int = 35, eval_step: Optional[Callable] = None) -> tuple[float, int]:
    """Perplexity of ``params`` on the token stream ``ids``: ``(perplexity, tokens)``."""
    eval_step = eval_step or make_eval_step(model)
    streams = batchify(ids, batch_size)
    carry = model.initial_carry(batch_size)
    total, count = 0.0, 0
    for x, y in bptt_windows(streams, bptt):
        nll, n, carry = eval_step(params, jnp.asarray(x), jnp.asarray(y), carry)
        total += float(nll)
        count += int(n)
    return math.exp(min(total / max(count, 1), 700.0)), count


def train_epoch_fused(
    epoch_fn: Callable,
    step: Callable,
    model: LanguageModel,
    state: TrainState,
    streams: np.ndarray,
    bptt: int,
):
    """One epoch with all full-length windows in a single jitted ``lax.scan``.

    ``epoch_fn`` comes from :func:`jrnn.make_train_epoch`; the windows are
    stacked and sent to the device once.  A last, shorter window (if any)
    runs through ``step`` afterwards, so every token is used exactly as in
    :func:`train_epoch`.  Returns ``(state, stats, first_bad)``: ``first_bad``
    is ``(window, metrics)`` of the first window whose loss or gradient was
    not finite, or ``None``.
    """
    B, N = streams.shape
    n_full = (N - 1) // bptt
    t0 = time.perf_counter()
    carry = None
    first_bad = None
    total_nll, total_tok, bad, max_norm = 0.0, 0, 0, 0.0
    if n_full:
        cut = n_full * bptt
        xs = jnp.asarray(streams[:, :cut].reshape(B, n_full, bptt).transpose(1, 0, 2))
        ys = jnp.asarray(streams[:, 1 : cut + 1].reshape(B, n_full, bptt).transpose(1, 0, 2))
        state, carry, ms = epoch_fn(state, xs, ys)
        ms = jax.device_get(ms)
        ok = np.asarray(ms["finite"], bool)
        if not ok.all():
            first = int(np.argmin(ok))
            first_bad = (first, {k: np.asarray(v)[first] for k, v in ms.items()})
        total_nll += float(np.sum(ms["token_nll"][ok] * ms["num_tokens"][ok]))
        total_tok += int(np.sum(ms["num_tokens"][ok]))
        bad += int(np.sum(~ok))
        norms = np.asarray(ms["grad_norm"])
        max_norm = float(np.max(norms[np.isfinite(norms)], initial=0.0))
    if N - 1 > n_full * bptt:
        x = streams[:, n_full * bptt : N - 1]
        y = streams[:, n_full * bptt + 1 : N]
        state, carry, m = step(state, jnp.asarray(x), jnp.asarray(y), carry)
        if bool(m["finite"]):
            total_nll += float(m["token_nll"]) * int(m["num_tokens"])
            total_tok += int(m["num_tokens"])
        else:
            bad += 1
            if first_bad is None:
                first_bad = (n_full, jax.device_get(m))
    return state, _stats(total_nll, total_tok, time.perf_counter() - t0, bad, max_norm), first_bad
