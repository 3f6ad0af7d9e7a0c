"""Long-range dependency tasks: where does each cell stop learning?

Three seeded, jit-friendly generators, each a :class:`Task` with a loss, a
metric and the metric's chance baseline:

* :func:`adding_problem` -- Hochreiter & Schmidhuber (1997), experiment 4:
  pairs (value, marker); two values are marked; the target at the sequence's
  end is their (scaled) sum; a sequence counts as solved when the absolute
  error is below 0.04.
* :func:`copy_memory` -- Arjovsky, Shah & Bengio (2016): ten symbols, ``T``
  blanks, a delimiter, then the ten symbols must be recalled.  The no-memory
  baseline's cross-entropy is ``10 log(8) / (T + 20)``.
* :func:`separable_verb` -- the lecture's "Anna *sieht* sich die Talkshow
  *an*": a verb opens a dependency that the matching particle closes ``k``
  words later, with distractor words between; the metric is the accuracy of
  choosing the right particle.

A task model is a cell plus a linear readout on every step
(:func:`init_task_model`, :func:`task_outputs`); :func:`train_task` fits one
with Adam (or RMSprop, :func:`task_optimizer`) within a fixed budget of
steps, and :func:`sweep` runs a cell over growing lengths to find where it
stops learning.  Besides the cells of
:data:`jrnn.diagnostics.CELL_NAMES`, the tasks take ``"lru"``: the diagonal
complex linear recurrence of :func:`jrnn.parallel.diagonal` (LRU-style)
between two position-wise GELU layers (:func:`task_cell`).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from jrnn.analysis.diagnostics import CELL_NAMES, MORE_CELL_NAMES, cell_by_name
from jrnn.analysis.probes import PROBE_KEY, probed
from jrnn.core.cells import Cell
from jrnn.core.parallel import associative_unroll, diagonal
from jrnn.core.unroll import unroll
from jrnn.core.validation import positive_int
from jrnn.training.step import make_update

Array = jax.Array

__all__ = [
    "TaskBatch",
    "Task",
    "TaskResult",
    "adding_problem",
    "copy_memory",
    "separable_verb_tokens",
    "separable_verb",
    "SEPARABLE_VOCAB",
    "SEPARABLE_PAIRS",
    "adding_task",
    "copy_task",
    "agreement_task",
    "get_task",
    "TASK_NAMES",
    "TASK_CELLS",
    "LRU_RING",
    "TASK_OPTIMIZERS",
    "task_optimizer",
    "task_cell",
    "hidden_gradients",
    "init_task_model",
    "task_outputs",
    "train_task",
    "sweep",
    "solved_lengths",
    "longest_solved",
]


class TaskBatch(NamedTuple):
    """One batch of a task (batch-major)."""

    inputs: Array  # float[B, T, D]
    targets: Array  # adding: float[B]; copy / agreement: int[B, T]
    lengths: Optional[Array]  # int[B] valid steps, or None when every sequence is T long


# ---- the adding problem -------------------------------------------------------------

ADDING_TOLERANCE = 0.04


def adding_problem(key: Array, batch_size: int, length: int, *, variant: str = "hs97",
                   dtype=jnp.float32) -> TaskBatch:
    """The adding problem, ``inputs: float[B, T', 2]`` (value, marker) and ``targets: float[B]``.

    ``variant="hs97"`` follows Hochreiter & Schmidhuber (1997), experiment 4:
    values are uniform in [-1, 1]; sequence lengths are uniform in
    ``[T, T + T//10]`` (padded to ``T' = T + T//10``, ``lengths`` says how
    long each is); one of the first ten pairs is marked (marker 1.0, value
    ``X1``), then one of the first ``T/2 - 1`` still unmarked pairs
    (``X2``); the first and last pairs carry marker -1 unless marked; if the
    first pair is marked its value is set to 0.  The target is
    ``0.5 + (X1 + X2) / 4``, in [0, 1].

    ``variant="sum"`` is the form most later papers use (e.g. Le et al.
    2015): length exactly T, values uniform in [0, 1], one marker in each
    half, target ``X1 + X2`` in [0, 2].

    Either way a sequence counts as solved when ``|prediction - target| <
    0.04``.  ``length`` must be at least 10.  Jit with ``batch_size``,
    ``length`` and ``variant`` static.

    Example:
      >>> import jax
      >>> from jrnn import tasks
      >>> b = tasks.adding_problem(jax.random.PRNGKey(0), 4, 20)
      >>> b.inputs.shape, b.targets.shape, [int(n) for n in (b.inputs[..., 1] == 1).sum(1)]
      ((4, 22, 2), (4,), [2, 2, 2, 2])
    """
    B = positive_int("batch_size", batch_size)
    T = positive_int("length", length, 10)
    t = jnp.arange(T + T // 10 if variant == "hs97" else T)[None, :]
    k_len, k_val, k1, k2 = jax.random.split(key, 4)
    if variant == "hs97":
        Tp = T + T // 10
        lengths = jax.random.randint(k_len, (B,), T, Tp + 1)
        values = jax.random.uniform(k_val, (B, Tp), dtype, -1.0, 1.0)
        p1 = jax.random.randint(k1, (B,), 0, 10)
        r = jax.random.randint(k2, (B,), 0, T // 2 - 1)
        p2 = jnp.where(r < p1, r, r + 1)  # the r-th pair that is still unmarked
        valid = t < lengths[:, None]
        marked = (t == p1[:, None]) | (t == p2[:, None])
        ends = ((t == 0) | (t == lengths[:, None] - 1)) & ~marked
        marker = jnp.where(marked, 1.0, jnp.where(ends, -1.0, 0.0))
        values = jnp.where(valid & ~(marked & (t == 0)), values, 0.0)
        marker = jnp.where(valid, marker, 0.0).astype(dtype)
        x = jnp.take_along_axis(values, jnp.stack([p1, p2], 1), axis=1)
        targets = 0.5 + (x[:, 0] + x[:, 1]) / 4.0
    elif variant == "sum":
        lengths = None
        values = jax.random.uniform(k_val, (B, T), dtype)
        p1 = jax.random.randint(k1, (B,), 0, T // 2)
        p2 = jax.random.randint(k2, (B,), T // 2, T)
        marker = ((t == p1[:, None]) | (t == p2[:, None])).astype(dtype)
        targets = jnp.sum(values * marker, axis=1)
    else:
        raise ValueError(f"variant must be 'hs97' or 'sum', got {variant!r}")
    inputs = jnp.stack([values.astype(dtype), marker], axis=-1)
    return TaskBatch(inputs, targets.astype(dtype), lengths)


# ---- the copy-memory task --------------------------------------------------------

COPY_SYMBOLS = 8  # data symbols 1..8; 0 is the blank, 9 the delimiter
COPY_PATTERN = 10
COPY_CLASSES = COPY_SYMBOLS + 2


def copy_memory(key: Array, batch_size: int, length: int, *, dtype=jnp.float32) -> TaskBatch:
    """Arjovsky et al. (2016)'s copy task: ``inputs: float[B, T+20, 10]`` one-hot, ``targets: int[B, T+20]``.

    Input: ten symbols from {1..8}, ``T - 1`` blanks (0), the delimiter (9),
    ten blanks.  Target: ``T + 10`` blanks, then the ten symbols.  A model
    that remembers nothing predicts blanks and then guesses uniformly, for a
    mean cross-entropy of ``10 log(8) / (T + 20)``.

    Example:
      >>> import jax
      >>> from jrnn import tasks
      >>> b = tasks.copy_memory(jax.random.PRNGKey(0), 2, 5)
      >>> b.inputs.shape, bool((b.targets[:, -10:] == b.inputs[:, :10].argmax(-1)).all())
      ((2, 25, 10), True)
    """
    B = positive_int("batch_size", batch_size)
    T = positive_int("length", length)
    pattern = jax.random.randint(key, (B, COPY_PATTERN), 1, COPY_SYMBOLS + 1)
    blanks = lambda n: jnp.zeros((B, n), pattern.dtype)
    delim = jnp.full((B, 1), COPY_SYMBOLS + 1, pattern.dtype)
    x = jnp.concatenate([pattern, blanks(T - 1), delim, blanks(COPY_PATTERN)], axis=1)
    y = jnp.concatenate([blanks(T + COPY_PATTERN), pattern], axis=1)
    return TaskBatch(jax.nn.one_hot(x, COPY_CLASSES, dtype=dtype), y.astype(jnp.int32), None)


def copy_baseline_loss(length: int) -> float:
    """The no-memory baseline's mean cross-entropy, ``10 log(8) / (T + 20)``."""
    return COPY_PATTERN * math.log(COPY_SYMBOLS) / (length + 2 * COPY_PATTERN)


# ---- the separable-verb agreement task ------------------------------------------------

# A verb and the particle that must close it ("sieht ... an" = ansehen).
SEPARABLE_PAIRS = (
    ("sieht", "an"), ("hört", "auf"), ("kommt", "mit"), ("macht", "zu"),
    ("lädt", "ein"), ("geht", "weg"), ("nimmt", "teil"), ("stellt", "vor"),
)
_SUBJECTS = ("Anna", "Ben", "Clara", "David", "Eva", "Felix")
_DISTRACTORS = (
    "sich", "die", "Talkshow", "heute", "abend", "im", "Fernsehen", "ohne", "großes",
    "Interesse", "wieder", "gern", "den", "ganzen", "Tag", "lang", "oft", "noch",
)
SEPARABLE_VOCAB = (("<s>", ".") + _SUBJECTS + tuple(v for v, _ in SEPARABLE_PAIRS)
                   + tuple(p for _, p in SEPARABLE_PAIRS) + _DISTRACTORS)
_VERB0 = 2 + len(_SUBJECTS)
_PARTICLE0 = _VERB0 + len(SEPARABLE_PAIRS)
_DISTRACTOR0 = _PARTICLE0 + len(SEPARABLE_PAIRS)


def separable_verb_tokens(key: Array, batch_size: int, distance: int) -> Array:
    """Sentences ``<s> subject verb d_1 .. d_{k-1} particle .``: ``int[B, k + 4]``.

    The verb is at position 2 and its particle at position ``k + 2``, ``k =
    distance`` words later; between them ``k - 1`` distractors drawn
    uniformly (with repetition) from a filler vocabulary that holds no verb
    or particle.  Ids index :data:`SEPARABLE_VOCAB`.

    Example:
      >>> import jax
      >>> from jrnn import tasks
      >>> s = tasks.separable_verb_tokens(jax.random.PRNGKey(3), 1, 3)[0]
      >>> len(s), tasks.SEPARABLE_VOCAB[int(s[2])] in [v for v, _ in tasks.SEPARABLE_PAIRS]
      (7, True)
    """
    B = positive_int("batch_size", batch_size)
    k = positive_int("distance", distance)
    k_subj, k_pair, k_fill = jax.random.split(key, 3)
    subj = 2 + jax.random.randint(k_subj, (B, 1), 0, len(_SUBJECTS))
    pair = jax.random.randint(k_pair, (B, 1), 0, len(SEPARABLE_PAIRS))
    fill = _DISTRACTOR0 + jax.random.randint(k_fill, (B, k - 1), 0, len(_DISTRACTORS))
    start = jnp.zeros((B, 1), subj.dtype)
    stop = jnp.ones((B, 1), subj.dtype)
    return jnp.concatenate([start, subj, _VERB0 + pair, fill, _PARTICLE0 + pair, stop], axis=1)


def separable_verb(key: Array, batch_size: int, distance: int, *, dtype=jnp.float32) -> TaskBatch:
    """The agreement task as language modelling: one-hot ``inputs: float[B, k+3, V]``, next-token ``targets``.

    ``inputs`` are the sentence without its last token, ``targets`` the
    sentence shifted by one; the particle is ``targets[:, k + 1]``.
    """
    tokens = separable_verb_tokens(key, batch_size, distance)
    x = jax.nn.one_hot(tokens[:, :-1], len(SEPARABLE_VOCAB), dtype=dtype)
    return TaskBatch(x, tokens[:, 1:].astype(jnp.int32), None)


# ---- tasks as data -------------------------------------------------------------------

class Task(NamedTuple):
    """A task: a generator, a loss, and a metric with its chance baseline.

    * ``sample(key, batch_size, length) -> TaskBatch``
    * ``loss(outputs: float[B, T, O], batch) -> scalar``
    * ``evaluate(outputs, batch) -> dict`` with ``metric`` (higher is better),
      ``chance`` (the same metric for a model that remembers nothing) and
      ``loss`` / ``baseline_loss``.
    * ``solved_at``: the metric at which a length counts as solved.
    * ``recall_loss(outputs, batch) -> scalar``: the part of the loss that
      needs the distant past (copy: the ten recalled symbols; agreement: the
      particle; ``None``: all of ``loss``), whose gradient
      :func:`hidden_gradients` follows back through time.
    """

    name: str
    metric_name: str
    input_size: int
    output_size: int
    min_length: int
    solved_at: float
    sample: Callable[..., TaskBatch]
    loss: Callable[[Array, TaskBatch], Array]
    evaluate: Callable[[Array, TaskBatch], dict]
    recall_loss: Optional[Callable[[Array, TaskBatch], Array]] = None


def _last_output(outputs: Array, batch: TaskBatch) -> Array:
    if batch.lengths is None:
        return outputs[:, -1, 0]
    return jnp.take_along_axis(outputs[..., 0], batch.lengths[:, None] - 1, axis=1)[:, 0]


def adding_task(variant: str = "hs97") -> Task:
    """The adding problem as a :class:`Task`: metric = fraction of sequences with ``|error| < 0.04``.

    Chance: always predicting the mean target (0.5 for ``hs97``, 1.0 for ``sum``).
    A length counts as solved when 95% of held-out sequences are.
    """
    if variant not in ("hs97", "sum"):
        raise ValueError(f"variant must be 'hs97' or 'sum', got {variant!r}")
    mean_target = 0.5 if variant == "hs97" else 1.0

    def sample(key, batch_size, length):
        return adding_problem(key, batch_size, length, variant=variant)

    def loss(outputs, batch):
        return jnp.mean(jnp.square(_last_output(outputs, batch) - batch.targets))

    def evaluate(outputs, batch):
        err = jnp.abs(_last_output(outputs, batch) - batch.targets)
        base = jnp.abs(mean_target - batch.targets)
        return {"metric": jnp.mean(err < ADDING_TOLERANCE), "chance": jnp.mean(base < ADDING_TOLERANCE),
                "loss": jnp.mean(err**2), "baseline_loss": jnp.mean(base**2)}

    return Task(f"adding[{variant}]" if variant != "hs97" else "adding", "solved fraction",
                2, 1, 10, 0.95, sample, loss, evaluate)


def _mean_ce(outputs, targets):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, targets))


def copy_task() -> Task:
    """The copy task as a :class:`Task`: metric = accuracy on the ten recalled symbols.

    Chance 1/8; loss and baseline are the mean cross-entropy over all
    ``T + 20`` steps and ``10 log(8) / (T + 20)``.  Solved at 90% accuracy.
    """

    def loss(outputs, batch):
        return _mean_ce(outputs, batch.targets)

    def evaluate(outputs, batch):
        T = batch.targets.shape[1] - 2 * COPY_PATTERN
        pred = jnp.argmax(outputs[:, -COPY_PATTERN:], axis=-1)
        acc = jnp.mean(pred == batch.targets[:, -COPY_PATTERN:])
        return {"metric": acc, "chance": jnp.asarray(1.0 / COPY_SYMBOLS),
                "loss": _mean_ce(outputs, batch.targets),
                "baseline_loss": jnp.asarray(copy_baseline_loss(T))}

    def recall_loss(outputs, batch):
        return _mean_ce(outputs[:, -COPY_PATTERN:], batch.targets[:, -COPY_PATTERN:])

    return Task("copy", "recall accuracy", COPY_CLASSES, COPY_CLASSES, 1, 0.9,
                copy_memory, loss, evaluate, recall_loss)


def agreement_task() -> Task:
    """The separable-verb task as a :class:`Task`: metric = accuracy of the particle.

    The model is trained as a language model on whole sentences; the metric
    asks which of the eight particles it ranks highest where the particle
    is due (chance 1/8).  Solved at 90% accuracy.
    """
    V, P = len(SEPARABLE_VOCAB), len(SEPARABLE_PAIRS)

    def loss(outputs, batch):
        return _mean_ce(outputs, batch.targets)

    def evaluate(outputs, batch):
        pos = batch.targets.shape[1] - 2  # the particle, just before the final "."
        particle_logits = outputs[:, pos, _PARTICLE0 : _PARTICLE0 + P]
        acc = jnp.mean(_PARTICLE0 + jnp.argmax(particle_logits, -1) == batch.targets[:, pos])
        ce = optax.softmax_cross_entropy_with_integer_labels(outputs[:, pos], batch.targets[:, pos])
        return {"metric": acc, "chance": jnp.asarray(1.0 / P), "loss": jnp.mean(ce),
                "baseline_loss": jnp.asarray(math.log(P))}

    def recall_loss(outputs, batch):
        pos = batch.targets.shape[1] - 2
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs[:, pos],
                                                                        batch.targets[:, pos]))

    return Task("agreement", "particle accuracy", V, V, 1, 0.9, separable_verb, loss, evaluate,
                recall_loss)


TASK_NAMES = ("adding", "copy", "agreement")


def get_task(name: str) -> Task:
    """A task by name: ``"adding"`` (H&S 1997), ``"adding-sum"``, ``"copy"`` or ``"agreement"``."""
    makers = {"adding": adding_task, "adding-sum": lambda: adding_task("sum"),
              "copy": copy_task, "agreement": agreement_task}
    if name not in makers:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(makers)}")
    return makers[name]()


# ---- a cell with a readout, trained on a task ------------------------------------------

TASK_CELLS = CELL_NAMES + ("lru",)

# The LRU's ring for long-range tasks (Orvieto et al. 2023 use r_min 0.9, r_max 0.999 on
# the long-range arena): |lambda|^500 is still 0.6 at the ring's outer edge.
LRU_RING = (0.9, 0.999)

# The optimizers train_task knows by name.  "rmsprop" is Tallec & Ollivier's (2018) choice for
# their synthetic tasks: RMSprop with a moving average of 0.9 for the squared gradients.
TASK_OPTIMIZERS = ("adam", "rmsprop")


def task_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """The optimizer :func:`train_task` runs for ``name`` in :data:`TASK_OPTIMIZERS`.

    ``"adam"`` is ``optax.adam(learning_rate)``.  ``"rmsprop"`` is
    RMSprop (Tieleman & Hinton 2012) as ``torch.optim.RMSprop`` computes it
    with ``alpha=0.9``: ``v = 0.9 v + 0.1 g^2`` from ``v = 0``, no bias
    correction, no momentum, step ``lr g / (sqrt(v) + 1e-8)`` (``eps``
    outside the square root).

    Example:
      >>> import jax.numpy as jnp
      >>> from jrnn import tasks
      >>> opt = tasks.task_optimizer("rmsprop", 1e-3)
      >>> u, _ = opt.update(jnp.array([2.0]), opt.init(jnp.zeros(1)))
      >>> round(float(u[0]), 6)  # -lr * 2 / sqrt(0.1 * 4): 1 / sqrt(0.1) times the step size
      -0.003162
    """
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "rmsprop":
        return optax.rmsprop(learning_rate, decay=0.9, eps=1e-8, eps_in_sqrt=False)
    raise ValueError(f"optimizer must be one of {list(TASK_OPTIMIZERS)}, got {name!r}")


def task_cell(name: str, hidden_size: int, *, lstm_init: str = "chrono", longest: int = 100) -> Cell:
    """The cell a task model uses for ``name`` in :data:`TASK_CELLS`.

    ``"lstm"`` starts with chrono initialization (``lstm_init="chrono"``,
    Tallec & Ollivier 2018: forget-gate time scales up to ``longest``, the
    longest sequence of the task) or with forget bias 1 (``"forget-bias"``).
    ``"lru"`` is :func:`jrnn.parallel.diagonal` with a complex state and
    ``|lambda|`` on the ring :data:`LRU_RING`; it is linear, so
    :func:`init_task_model` puts a GELU layer before and after it.

    Example:
      >>> from jrnn import tasks
      >>> [tasks.task_cell(n, 8).kind for n in ("tanh", "lstm", "lru")]
      ['elman', 'lstm', 'diagonal']
    """
    if lstm_init not in ("forget-bias", "chrono"):
        raise ValueError(f"lstm_init must be 'forget-bias' or 'chrono', got {lstm_init!r}")
    if name == "lru":
        return diagonal(hidden_size, complex_state=True, r_min=LRU_RING[0], r_max=LRU_RING[1])
    if name == "lstm":
        kwargs = {"chrono": max(int(longest), 3)} if lstm_init == "chrono" else {"forget_bias": 1.0}
        return cell_by_name(name, hidden_size, **kwargs)
    if name not in TASK_CELLS + MORE_CELL_NAMES:
        raise ValueError(f"unknown cell name {name!r}; expected one of {list(TASK_CELLS + MORE_CELL_NAMES)}")
    return cell_by_name(name, hidden_size)


def _dense(key: Array, n_in: int, n_out: int, dtype) -> dict:
    s = 1.0 / math.sqrt(n_in)
    return {"W": jax.random.uniform(key, (n_in, n_out), dtype, -s, s), "b": jnp.zeros((n_out,), dtype)}


def init_task_model(cell: Cell, task: Task, key: Array, dtype=jnp.float32) -> dict:
    """``{"cell": cell params, "out": {"W": [H, O], "b": [O]}}`` for ``task``.

    A linear recurrence (a ``"diagonal"`` cell) gets position-wise
    nonlinear layers around it, as in the LRU's blocks: ``"enc": {"W": [D,
    H], "b": [H]}`` (GELU, before the recurrence: the adding problem needs
    ``value * marker``, which no linear map of the inputs gives) and
    ``"dec": {"W": [H, H], "b": [H]}`` (GELU with a residual, after it).
    """
    k_cell, k_out, k_enc, k_dec = jax.random.split(key, 4)
    H, O = cell.hidden_size, task.output_size
    params = {"out": _dense(k_out, H, O, dtype)}
    if cell.kind == "diagonal":
        params["enc"] = _dense(k_enc, task.input_size, H, dtype)
        params["dec"] = _dense(k_dec, H, H, dtype)
        params["cell"] = cell.init(k_cell, H, dtype)
    else:
        params["cell"] = cell.init(k_cell, task.input_size, dtype)
    return params


def _encode(params: dict, inputs: Array) -> Array:
    if "enc" not in params:
        return inputs
    return jax.nn.gelu(inputs @ params["enc"]["W"] + params["enc"]["b"])


def _decode(params: dict, hs: Array) -> Array:
    if "dec" in params:
        hs = hs + jax.nn.gelu(hs @ params["dec"]["W"] + params["dec"]["b"])
    return hs @ params["out"]["W"] + params["out"]["b"]


def task_outputs(cell: Cell, params: dict, batch: TaskBatch) -> Array:
    """The readout on every step: ``float[B, T, O]``.

    A diagonal (LRU) cell runs as a parallel scan over time
    (:func:`jrnn.parallel.associative_unroll`: the same states, in ``log T``
    depth), any other cell through :func:`jrnn.unroll`.
    """
    xs = _encode(params, batch.inputs)
    if cell.kind == "diagonal":
        _, hs = associative_unroll(cell, params["cell"], jnp.swapaxes(xs, 0, 1), lengths=batch.lengths)
        hs = jnp.swapaxes(hs, 0, 1)
    else:
        _, hs = unroll(cell, params["cell"], xs, lengths=batch.lengths, time_major=False)
    return _decode(params, hs)


def hidden_gradients(cell: Cell, params: dict, task: Task, batch: TaskBatch) -> Array:
    """``||dL/dh_t||`` for every step ``t``: ``float[T]``, the mean over the batch.

    ``L`` is the part of the task's loss that needs the distant past
    (``task.recall_loss``; adding: the error at each sequence's last valid
    step; copy: the cross-entropy of the ten recalled symbols; agreement: of
    the particle), summed over the batch, and ``dL/dh_t`` the total
    derivative through every later step, taken with
    :func:`jrnn.diagnostics.grad_flow`'s probe: a zero perturbation added to
    the hidden state after each step.  For the same model before and after
    training this shows how much of the loss's signal reaches each distance.

    Example:
      >>> import jax
      >>> from jrnn import tasks
      >>> task, cell = tasks.get_task("adding"), tasks.task_cell("tanh", 8)
      >>> params = tasks.init_task_model(cell, task, jax.random.PRNGKey(0))
      >>> batch = task.sample(jax.random.PRNGKey(1), 4, 20)
      >>> g = tasks.hidden_gradients(cell, params, task, batch)
      >>> g.shape, bool(g[0] < g[-3])
      ((22,), True)
    """
    return _hidden_gradients(cell, task, params, batch)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _hidden_gradients(cell: Cell, task: Task, params: dict, batch: TaskBatch) -> Array:
    # Params and batch are arguments (not constants baked into the program), so the
    # before- and after-training calls of one run share one compiled program.
    probed_cell = probed(cell)
    B, T = batch.inputs.shape[:2]

    def loss(eps):
        _, hs = unroll(probed_cell, {**params["cell"], PROBE_KEY: eps}, _encode(params, batch.inputs),
                       lengths=batch.lengths, time_major=False)
        loss_fn = task.recall_loss or task.loss
        return loss_fn(_decode(params, hs), batch) * B  # per-sequence losses, summed

    eps = jnp.zeros((T, B, cell.hidden_size), batch.inputs.dtype)  # time-major, as the scan sees it
    g = jax.grad(loss)(eps)
    return jnp.mean(jnp.linalg.norm(g, axis=-1), axis=1)


class TaskResult(NamedTuple):
    """One training run on one task at one length."""

    task: str
    cell: str
    length: int
    seed: int
    steps: int  # steps actually run (training stops early once solved)
    metric: float
    chance: float
    loss: float
    baseline_loss: float
    solved: bool
    seconds: float
    history: list  # [(step, train loss, held-out metric)]
    # ||dL/dh_t|| per step t on held-out sequences, {"untrained": [...], "trained": [...]},
    # when train_task(gradient_evidence=True).
    evidence: Optional[dict] = None


def train_task(
    task: Task,
    cell_name: str,
    length: int,
    *,
    steps: int = 2000,
    batch_size: int = 64,
    hidden_size: int = 64,
    learning_rate: float = 3e-3,
    clip_norm: float = 1.0,
    seed: int = 0,
    eval_size: int = 1000,
    eval_every: int = 250,
    stop_when_solved: bool = True,
    on_progress: Optional[Callable[[int, int, float, float], None]] = None,
    lstm_init: str = "chrono",
    gradient_evidence: bool = False,
    optimizer: str = "adam",
    chrono_tmax: Optional[int] = None,
) -> TaskResult:
    """Train ``cell_name`` on ``task`` at ``length`` within a budget of ``steps`` optimizer steps.

    Fresh batches come from the generator every step (seeded by ``seed``);
    every ``eval_every`` steps the model is scored on one fixed held-out
    batch of ``eval_size`` sequences from an independent key, and training
    stops early once ``task.solved_at`` is reached.  The steps between two
    evaluations run as one jitted ``lax.scan``.  ``cell_name`` is one of
    :data:`TASK_CELLS` (see :func:`task_cell`); LSTMs start with chrono
    initialization (``lstm_init="chrono"``, Tallec & Ollivier 2018, time
    scales up to the longest sequence of the task, or up to ``chrono_tmax``
    steps when given) or with forget bias 1 (``"forget-bias"``).  With
    ``gradient_evidence`` the result carries :func:`hidden_gradients` on 100
    held-out sequences for the model before and after training.  Each step
    is the training core of ``fit`` (:func:`jrnn.training.step.make_update`):
    the gradient's global norm is clipped to ``clip_norm`` (``None``: no
    clipping) before the update of ``optimizer`` (:func:`task_optimizer`:
    ``"adam"`` or ``"rmsprop"``) at ``learning_rate``.

    ``on_progress(step, steps, train_loss, metric)`` is called after each chunk.
    """
    positive_int("steps", steps)
    positive_int("eval_every", eval_every)
    length = positive_int("length", length, task.min_length)
    optimizer = task_optimizer(optimizer, learning_rate)
    if chrono_tmax is not None:
        positive_int("chrono_tmax", chrono_tmax, 3)
        if cell_name != "lstm" or lstm_init != "chrono":
            raise ValueError("chrono_tmax is for an LSTM with lstm_init='chrono', got "
                             f"cell {cell_name!r} with lstm_init={lstm_init!r}")
        longest = chrono_tmax
    else:
        # Chrono's time scales reach the task's longest sequence (only the LSTM needs it).
        longest = task.sample(jax.random.PRNGKey(0), 1, length).inputs.shape[1] if cell_name == "lstm" else 0
    cell = task_cell(cell_name, hidden_size, lstm_init=lstm_init, longest=longest)
    k_init, k_train, k_eval = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = init_task_model(cell, task, k_init)
    opt_state = optimizer.init(params)
    eval_batch = task.sample(k_eval, eval_size, length)

    def loss_fn(params, batch):
        return task.loss(task_outputs(cell, params, batch), batch)

    # The training core of ``fit``: gradient, clipping to ``clip_norm``, Adam.
    update = make_update(loss_fn, optimizer, clip_norm=clip_norm)

    def one_step(carry, key):
        params, opt_state, _, m = update(*carry, task.sample(key, batch_size, length))
        return (params, opt_state), m["loss"]

    @jax.jit
    def chunk(params, opt_state, keys):
        (params, opt_state), losses = jax.lax.scan(one_step, (params, opt_state), keys)
        return params, opt_state, jnp.mean(losses)

    @jax.jit
    def evaluate_on(params, batch):  # the batch is an argument, not a closed-over constant
        return task.evaluate(task_outputs(cell, params, batch), batch)

    evaluate = lambda params: evaluate_on(params, eval_batch)

    def grads_now(params):
        probe = jax.tree.map(lambda a: a[:100], eval_batch)
        return [float(f"{float(v):.4g}") for v in hidden_gradients(cell, params, task, probe)]

    evidence = {"untrained": grads_now(params)} if gradient_evidence else None
    t0 = time.perf_counter()
    done, history = 0, []
    m = {k: float(v) for k, v in evaluate(params).items()}
    while done < steps:
        n = min(eval_every, steps - done)
        keys = jax.random.split(jax.random.fold_in(k_train, done), n)
        params, opt_state, train_loss = chunk(params, opt_state, keys)
        done += n
        m = {k: float(v) for k, v in evaluate(params).items()}
        history.append((done, float(train_loss), m["metric"]))
        if on_progress is not None:
            on_progress(done, steps, float(train_loss), m["metric"])
        if stop_when_solved and m["metric"] >= task.solved_at:
            break
        if not math.isfinite(float(train_loss)):
            break
    seconds = time.perf_counter() - t0
    if evidence is not None:
        evidence["trained"] = grads_now(params)
    return TaskResult(task.name, cell_name, length, seed, done, m["metric"], m["chance"], m["loss"],
                      m["baseline_loss"], m["metric"] >= task.solved_at, seconds, history, evidence)


def sweep(
    task: Task,
    cells: Sequence[str] = CELL_NAMES,
    lengths: Sequence[int] = (10, 20, 50, 100, 200),
    *,
    seeds: Sequence[int] = (0,),
    need: int = 1,
    stop_after_failure: bool = True,
    per_cell: Optional[dict] = None,
    on_result: Optional[Callable[[TaskResult], None]] = None,
    **train_kwargs,
) -> list[TaskResult]:
    """Train every cell at every length (shortest first); see :func:`train_task`.

    A cell/length counts as solved when at least ``need`` of ``seeds``
    solve it (``need=1``: any seed).  Seeds run in order and stop as soon as
    the outcome is decided: after ``need`` successes, or once too few seeds
    are left to reach ``need``.  With ``stop_after_failure`` a cell is not
    tried at longer lengths once it has failed one: on these tasks a longer
    length is only harder.  ``per_cell`` maps a cell name to
    :func:`train_task` keyword arguments that override ``train_kwargs`` for
    that cell (e.g. ``{"lru": {"hidden_size": 128}}``).
    """
    need = positive_int("need", need)
    if need > len(seeds):
        raise ValueError(f"need={need} seeds to solve a length, but only {len(seeds)} seeds given")
    per_cell = dict(per_cell or {})
    unknown = sorted(set(per_cell) - set(cells))
    if unknown:
        raise ValueError(f"per_cell names cells that are not swept: {unknown}")
    results = []
    for name in cells:
        kwargs = {**train_kwargs, **per_cell.get(name, {})}
        for length in sorted(lengths):
            solved = failed = 0
            for seed in seeds:
                r = train_task(task, name, length, seed=seed, **kwargs)
                results.append(r)
                solved, failed = solved + r.solved, failed + (not r.solved)
                if on_result is not None:
                    on_result(r)
                if solved >= need or len(seeds) - failed < need:
                    break
            if stop_after_failure and solved < need:
                break
    return results


def solved_lengths(results: Sequence[TaskResult], need: int = 1) -> dict:
    """``{(cell, length): True/False}``: whether at least ``need`` seeds solved it."""
    count: dict = {}
    for r in results:
        count[(r.cell, r.length)] = count.get((r.cell, r.length), 0) + bool(r.solved)
    return {k: n >= need for k, n in count.items()}


def longest_solved(results: Sequence[TaskResult], need: int = 1) -> dict:
    """``{cell: longest solved length, or None}``, over lengths below the first failure.

    A length counts as solved when at least ``need`` seeds solved it.
    """
    solved = solved_lengths(results, need)
    out: dict = {}
    for cell in dict.fromkeys(r.cell for r in results):
        by_len = {length: ok for (c, length), ok in solved.items() if c == cell}
        best = None
        for length in sorted(by_len):
            if not by_len[length]:
                break
            best = length
        out[cell] = best
    return out
