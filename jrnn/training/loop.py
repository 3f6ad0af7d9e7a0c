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

from jrnn.data import batchify, bptt_windows, num_windows
from jrnn.models.lm import LanguageModel
from jrnn.training.step import TrainState, make_eval_step

__all__ = [
    "make_optimizer",
    "set_learning_rate",
    "get_learning_rate",
    "zaremba_lr",
    "EpochStats",
    "train_epoch",
    "evaluate",
    "train_epoch_fused",
]


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """``sgd``, ``adam`` or ``adamw`` with the learning rate injected into the state."""
    makers = {"sgd": optax.sgd, "adam": optax.adam, "adamw": optax.adamw}
    if name not in makers:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(makers)}")
    return optax.inject_hyperparams(makers[name])(learning_rate=learning_rate)


def set_learning_rate(state: TrainState, lr: float) -> TrainState:
    hp = dict(state.opt_state.hyperparams)
    hp["learning_rate"] = jnp.asarray(lr, jnp.asarray(hp["learning_rate"]).dtype)
    return state._replace(opt_state=state.opt_state._replace(hyperparams=hp))


def get_learning_rate(state: TrainState) -> float:
    return float(state.opt_state.hyperparams["learning_rate"])


def zaremba_lr(base_lr: float, decay: float, decay_start: int, epoch: int) -> float:
    """Zaremba et al.'s schedule: ``base_lr`` for ``decay_start`` epochs, then times ``decay`` per epoch.

    ``epoch`` counts from 0.
    """
    return base_lr * decay ** max(epoch + 1 - decay_start, 0)


class EpochStats(NamedTuple):
    nll: float  # mean per-token cross-entropy
    perplexity: float
    tokens: int
    seconds: float
    nonfinite_windows: int
    max_grad_norm: float


def train_epoch(
    step: Callable,
    model: LanguageModel,
    state: TrainState,
    streams: np.ndarray,
    bptt: int,
    *,
    start_window: int = 0,
    on_window: Optional[Callable[[int, int, dict, float], None]] = None,
    should_stop: Optional[Callable[[int, TrainState], bool]] = None,
):
    """Run ``step`` over all BPTT windows of ``streams: int[B, N]``.

    The carry of each window starts the next.  ``on_window(i, n, metrics,
    tokens_per_s)`` is called after each window with host-side floats (the
    only sync point per window); ``should_stop(i, state)`` may end the epoch
    early, and may save ``state`` (the state after window ``i``).

    Returns ``(state, stats, next_window)``: ``next_window`` is where a
    resumed run should start (``n`` when the epoch ran to its end).
    """
    B = streams.shape[0]
    n = num_windows(streams, bptt)
    carry = model.initial_carry(B)
    total_nll, total_tok, bad, max_norm = 0.0, 0, 0, 0.0
    t0 = time.perf_counter()
    i = start_window
    for i, (x, y) in enumerate(bptt_windows(streams, bptt)):
        if i < start_window:
            continue
        state, carry, m = step(state, jnp.asarray(x), jnp.asarray(y), carry)
        m = {k: float(v) for k, v in m.items()}
        tok = int(m["num_tokens"])
        if m["finite"]:
            total_nll += m["token_nll"] * tok
            total_tok += tok
        else:
            bad += 1
        max_norm = max(max_norm, m["grad_norm"]) if math.isfinite(m["grad_norm"]) else max_norm
        if on_window is not None:
            on_window(i, n, m, total_tok / max(time.perf_counter() - t0, 1e-9))
        if should_stop is not None and should_stop(i, state):
            i += 1
            break
    else:
        i = n
    nll = total_nll / max(total_tok, 1)
    stats = EpochStats(nll, math.exp(min(nll, 700.0)), total_tok, time.perf_counter() - t0, bad, max_norm)
    return state, stats, i


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
    :func:`train_epoch`.  Returns ``(state, stats)``.
    """
    B, N = streams.shape
    n_full = (N - 1) // bptt
    t0 = time.perf_counter()
    carry = None
    total_nll, total_tok, bad, max_norm = 0.0, 0, 0, 0.0
    if n_full:
        cut = n_full * bptt
        xs = jnp.asarray(streams[:, :cut].reshape(B, n_full, bptt).transpose(1, 0, 2))
        ys = jnp.asarray(streams[:, 1 : cut + 1].reshape(B, n_full, bptt).transpose(1, 0, 2))
        state, carry, ms = epoch_fn(state, xs, ys)
        ms = jax.device_get(ms)
        ok = np.asarray(ms["finite"], bool)
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
    nll = total_nll / max(total_tok, 1)
    return state, EpochStats(nll, math.exp(min(nll, 700.0)), total_tok,
                             time.perf_counter() - t0, bad, max_norm)
