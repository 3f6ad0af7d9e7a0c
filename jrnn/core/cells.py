"""Recurrent cells: each one a NamedTuple of pure functions made by a factory.

A cell knows one timestep of the recurrence and nothing else.  Every cell has

* ``init(key, input_size, dtype=float32) -> params`` -- a dict of arrays named
  as in the lecture: ``W`` (input_size x G*H), ``W_h`` (H x G*H), ``b`` (G*H),
  where G is the number of gates (1 for linear/Elman, 4 for the LSTM, 3 for
  the GRU).  The GRU also has ``b_h`` (G*H), its recurrent bias.  The cells
  whose gates read only ``x_t`` (:func:`mingru`, :func:`minlstm`,
  :func:`rglru`) have no ``W_h``; each docstring lists its params.
* ``initial_carry(batch_shape, dtype=float32) -> carry`` -- zeros.
* ``project(params, xs) -> xs_proj`` -- the input projection ``x W + b`` for
  every timestep at once: ``xs: [..., D] -> [..., G*H]``.  It has no time
  dependency, so :func:`jrnn.unroll` computes it as one large matmul outside
  the sequential loop.
* ``step(params, carry, x_proj) -> (carry, h)`` -- one timestep, with
  ``jax.lax.scan``'s own signature (``x_proj: [B, G*H]``, ``h: [B, H]``).
* ``hidden(carry) -> h`` -- the hidden state held in a carry (the LSTM's carry
  also holds the memory cell ``c``).
* ``sequence`` -- optional: ``sequence(params, xs_proj, carry, *, reverse,
  unroll) -> (carry, hs)`` runs the whole layer with the same values as
  ``lax.scan`` of ``step`` but a hand-written backward pass
  (:mod:`jrnn.core.backward`); :func:`jrnn.unroll` uses it unless told not to.
  ``sequence_step`` names the ``step`` it was written for: a cell whose
  ``step`` was replaced (``remat``, a diagnostics probe,
  ``cell._replace(step=...)``) falls back to autodiff of its own step
  (:func:`sequence_for`).
* ``affine`` -- optional, for a cell whose recurrence is elementwise-affine in
  its state with coefficients from the input alone, ``h_t = a_t * h_{t-1} +
  b_t`` (:func:`mingru`, :func:`minlstm`, :func:`rglru`):
  ``affine(params, xs_proj) -> (a, b)``, both ``[..., H]``, for any number of
  timesteps at once.  The cell's ``step`` is ``h = a * h + b`` with them, and
  ``jrnn.unroll(..., method="associative")`` runs the same recurrence as a
  parallel scan over time (:mod:`jrnn.core.parallel`).
* ``parallel`` -- optional, for a cell whose state is updated by gates from
  the input alone but is not elementwise (:func:`mlstm`'s matrix memory):
  ``parallel(params, xs_proj, carry, ends) -> (carry, hs)`` runs the whole
  sequence at once, forward in time, with sequence ``b``'s final carry taken
  after ``ends[b]`` steps; ``jrnn.unroll(..., method="associative")`` uses it.

The xLSTM cells (:func:`slstm`, :func:`mlstm`) carry more than ``h``
(:class:`SLSTMCarry`, :class:`MLSTMCarry`); :func:`slstm` has a block-diagonal
recurrent weight ``R`` instead of ``W_h``, and :func:`mlstm` none.

What a cell *is* lives in typed fields, never in strings to parse:
``kind`` is the family (``"linear"``, ``"elman"``, ``"lstm"``, ``"gru"``,
``"mingru"``, ``"minlstm"``, ``"rglru"``, ``"slstm"``, ``"mlstm"``, ``"diagonal"``),
``activation`` the named activation of a linear or Elman
cell (``None`` for gated cells and custom callables), and ``remat`` whether
the step is rematerialized.  ``hidden_size`` is always the width of the
hidden state ``h`` and of the outputs (what the next layer reads);
``cell_size`` is set only for an LSTM with projections
(``jrnn.lstm(H, proj_size=P)``): it is then ``H``, the width of the memory
cell ``c`` and of each gate block, while ``hidden_size`` is ``P``.  For every
other cell the gate blocks are ``hidden_size`` wide (:func:`gate_size`).
Wrapping a cell (:func:`remat`) keeps its kind, so every consumer (parallel
scans, the PyTorch exchange, the Jacobian bound) still accepts it.

Arrays use the row-vector convention ``x @ W``: ``W`` is ``weight_ih.T`` of
PyTorch and ``W_h`` is ``weight_hh.T``.  Gate blocks are laid out in
PyTorch's order, so weights move between jrnn and ``torch.nn.RNN`` / ``LSTM``
/ ``GRU`` by transposing (and, for RNN and LSTM, adding PyTorch's two biases).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from jrnn.core import backward, names
from jrnn.core.gates import ACTIVATIONS, LSTMCarry, gru_update, lstm_update
from jrnn.core.validation import positive_int

Array = jax.Array
Params = dict
Carry = Any

__all__ = [
    "Cell",
    "LSTMCarry",
    "linear",
    "elman",
    "lstm",
    "gru",
    "mingru",
    "minlstm",
    "rglru",
    "slstm",
    "mlstm",
    "SLSTMCarry",
    "MLSTMCarry",
    "make_cell",
    "remat",
    "sequence_for",
    "gate_size",
    "ACTIVATIONS",
    "CELL_KINDS",
    "CELL_FACTORIES",
    "interned",
]


def interned(factory: Callable) -> Callable:
    """``factory``, returning one and the same value for equal arguments.

    Cells and models are NamedTuples of closures; closures compare by
    identity, so two separately built ``jrnn.lstm(8)`` would never be equal
    and each would make ``jax.jit`` compile again when passed as a static
    argument.  Interning makes a cell a value: equal configuration (the
    arguments after defaults are filled in, compared with their types, so
    ``True`` is not ``1``) gives the identical object, hence equal and
    hashable.  Arguments that cannot be hashed (an array as ``init_scale``)
    build a fresh value, exactly as without interning.

    Example:
      >>> import jax.numpy as jnp, jrnn
      >>> jrnn.lstm(8) == jrnn.lstm(hidden_size=8, forget_bias=0.0), jrnn.lstm(8) == jrnn.lstm(9)
      (True, False)
      >>> jrnn.elman(4, jnp.sin) == jrnn.elman(4, activation=jnp.sin)
      True
    """
    signature = inspect.signature(factory)
    cache: dict = {}

    @functools.wraps(factory)
    def make(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = tuple((name, type(v), v) for name, v in bound.arguments.items())
        try:
            return cache[key]
        except TypeError:  # an unhashable argument: no interning
            return factory(*args, **kwargs)
        except KeyError:
            value = cache[key] = factory(*args, **kwargs)
            return value

    make.cache_clear = cache.clear
    return make


class Cell(NamedTuple):
    """A recurrent cell: static sizes plus pure functions (see module doc).

    Cells made by jrnn's factories are values: equal arguments give the same
    cell (:func:`interned`), so equal cells are equal, hash alike and share
    one ``jax.jit`` compilation.
    """

    kind: str
    hidden_size: int
    num_gates: int
    init: Callable[..., Params]
    initial_carry: Callable[..., Carry]
    project: Callable[[Params, Array], Array]
    step: Callable[[Params, Carry, Array], tuple]
    hidden: Callable[[Carry], Array]
    sequence: Optional[Callable[..., tuple]] = None
    activation: Optional[str] = None
    sequence_step: Optional[Callable] = None
    remat: bool = False
    cell_size: Optional[int] = None
    affine: Optional[Callable[[Params, Array], tuple]] = None
    parallel: Optional[Callable[..., tuple]] = None


def gate_size(cell: Cell) -> int:
    """The width of each gate block: ``cell.cell_size`` if set (LSTMP), else ``cell.hidden_size``.

    Example:
      >>> import jrnn
      >>> gate_size(jrnn.lstm(8)), gate_size(jrnn.lstm(8, proj_size=3)), jrnn.lstm(8, proj_size=3).hidden_size
      (8, 8, 3)
    """
    return cell.hidden_size if cell.cell_size is None else cell.cell_size


def sequence_for(cell: Cell) -> Optional[Callable]:
    """``cell.sequence`` if it still belongs to ``cell.step``, else ``None``.

    Example:
      >>> import jrnn
      >>> cell = jrnn.lstm(4)
      >>> sequence_for(cell) is cell.sequence, sequence_for(jrnn.remat(cell))
      (True, None)
    """
    if cell.sequence is not None and cell.sequence_step is cell.step:
        return cell.sequence
    return None


@interned
def remat(cell: Cell) -> Cell:
    """The same cell with its step under ``jax.checkpoint`` (rematerialization).

    The backward pass recomputes each step's gates from the saved carry instead
    of keeping them: about ``T * B * G * H`` fewer floats held for long
    sequences, for one more forward step each.  Results are unchanged, and so
    are the cell's ``kind`` and ``activation``; the hand-written backward pass
    (which keeps the gates) is not used for a rematerialized step.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cell = jrnn.remat(jrnn.lstm(4))
      >>> cell.kind, cell.remat
      ('lstm', True)
      >>> params = cell.init(jax.random.PRNGKey(0), 2)
      >>> jrnn.unroll(cell, params, jnp.ones((3, 1, 2)))[1].shape
      (3, 1, 4)
    """
    return cell._replace(step=jax.checkpoint(cell.step), remat=True)


def _resolve_activation(activation: Union[str, Callable]) -> tuple[Optional[str], Callable]:
    if callable(activation):
        return None, activation
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of "
            f"{sorted(ACTIVATIONS)} or a callable"
        )
    return activation, ACTIVATIONS[activation].fn


def _uniform_init(num_gates: int, hidden_size: int, init_scale, with_b_h: bool):
    """PyTorch's default: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
    scale = 1.0 / hidden_size**0.5 if init_scale is None else float(init_scale)
    gh = num_gates * hidden_size

    def init(key: Array, input_size: int, dtype=jnp.float32) -> Params:
        positive_int("input_size", input_size)
        names_shapes = [
            ("W", (input_size, gh)),
            ("W_h", (hidden_size, gh)),
            ("b", (gh,)),
        ]
        if with_b_h:
            names_shapes.append(("b_h", (gh,)))
        keys = jax.random.split(key, len(names_shapes))
        return {
            name: jax.random.uniform(k, shape, dtype, -scale, scale)
            for k, (name, shape) in zip(keys, names_shapes)
        }

    return init


def _zeros_carry(hidden_size: int):
    def initial_carry(batch_shape: Union[int, Sequence[int]] = (), dtype=jnp.float32) -> Array:
        if isinstance(batch_shape, int):
            batch_shape = (batch_shape,)
        return jnp.zeros((*batch_shape, hidden_size), dtype)

    return initial_carry


def _project(params: Params, xs: Array) -> Array:
    # One matmul for all timesteps: [..., D] @ [D, G*H] + [G*H].
    return xs @ params["W"] + params["b"]


def _identity_hidden(carry: Array) -> Array:
    return carry


@interned
def elman(
    hidden_size: int,
    activation: Union[str, Callable[[Array], Array]] = "tanh",
    *,
    init_scale: float | None = None,
) -> Cell:
    r"""Elman RNN cell: the lecture's recurrence followed by an activation.

    .. math::
        h_t = \sigma(W x_t + W_h h_{t-1} + b)

    with :math:`\sigma` one of ``"tanh"``, ``"sigmoid"``, ``"relu"``,
    ``"identity"`` or any callable.  Shapes: ``W: [D, H]``, ``W_h: [H, H]``,
    ``b: [H]``, carry ``h: [B, H]``.  PyTorch ``nn.RNN`` (tanh/relu):
    ``W = weight_ih_l0.T``, ``W_h = weight_hh_l0.T``, ``b = bias_ih_l0 + bias_hh_l0``.

    Args:
      hidden_size: H.
      activation: name or callable applied elementwise.
      init_scale: weights start ~ U(-s, s); ``None`` means s = 1/sqrt(H), as PyTorch.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cell = jrnn.elman(8)
      >>> params = cell.init(jax.random.PRNGKey(0), input_size=3)
      >>> carry, hs = jrnn.unroll(cell, params, jnp.ones((5, 2, 3)))
      >>> hs.shape, carry.shape
      ((5, 2, 8), (2, 8))
    """
    positive_int("hidden_size", hidden_size)
    name, act = _resolve_activation(activation)

    def step(params: Params, h: Array, x_proj: Array):
        h = act(x_proj + h @ params["W_h"])
        return h, h

    return Cell(
        kind="elman",
        hidden_size=hidden_size,
        num_gates=1,
        init=_uniform_init(1, hidden_size, init_scale, with_b_h=False),
        initial_carry=_zeros_carry(hidden_size),
        project=_project,
        step=step,
        hidden=_identity_hidden,
        sequence=backward.elman_sequence(name) if name is not None else None,
        activation=name,
        sequence_step=step,
    )


@interned
def linear(hidden_size: int, *, init_scale: float | None = None) -> Cell:
    r"""The lecture's linear recurrence, with no activation.

    .. math::
        h_t = W x_t + W_h h_{t-1} + b

    Because nothing squashes it, ``h_T`` is a sum of powers of ``W_h`` applied
    to the inputs: it vanishes or explodes with the spectral radius of ``W_h``.
    Shapes as in :func:`elman`.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cell = jrnn.linear(4)
      >>> params = cell.init(jax.random.PRNGKey(0), input_size=2)
      >>> jrnn.unroll(cell, params, jnp.zeros((3, 1, 2)))[1].shape
      (3, 1, 4)
    """
    cell = elman(hidden_size, "identity", init_scale=init_scale)
    return cell._replace(kind="linear")


@interned
def lstm(
    hidden_size: int,
    *,
    forget_bias: float = 0.0,
    init_scale: float | None = None,
    proj_size: int | None = None,
    chrono: int | None = None,
) -> Cell:
    r"""Long short-term memory cell, gate order (i, f, g, o) as in PyTorch.

    With ``z = W x_t + b + W_h h_{t-1}`` split into four ``[B, H]`` blocks:

    .. math::
        i = \sigma(z_i),\ f = \sigma(z_f),\ g = \tanh(z_g),\ o = \sigma(z_o) \\
        c_t = f \odot c_{t-1} + i \odot g, \qquad h_t = o \odot \tanh(c_t)

    Shapes: ``W: [D, 4H]``, ``W_h: [H, 4H]``, ``b: [4H]``; the carry is
    :class:`LSTMCarry` ``(h, c)``.  ``forget_bias`` is added to the forget
    slice ``b[H:2H]`` at initialization only; the step is exactly PyTorch's,
    so ``torch.nn.LSTM`` weights load as ``W = weight_ih.T``,
    ``W_h = weight_hh.T``, ``b = bias_ih + bias_hh``.

    **Projections** (LSTMP, PyTorch's ``proj_size``): with ``proj_size=P``
    the output is projected down, :math:`h_t = (o \odot \tanh c_t) W_{hr}`
    with ``W_hr: [H, P]`` (``weight_hr.T`` of PyTorch).  Then ``h`` and the
    outputs are ``P`` wide, ``c`` stays ``H`` wide, ``W_h: [P, 4H]``; the
    returned cell has ``hidden_size == P`` (the output width, which stacks
    and models read) and ``cell_size == H``.  Such a cell has no
    hand-written backward pass (``cell.sequence is None``):
    :func:`jrnn.unroll` differentiates its scan with autodiff.
    ``proj_size=None`` or ``0`` gives the plain LSTM.

    **Chrono initialization** (Tallec & Ollivier 2018, "Can recurrent neural
    networks warp time?"): with ``chrono=T_max`` the forget biases are drawn
    as ``b_f = log(u)``, ``u ~ U(1, T_max - 1)``, and the input biases set to
    ``b_i = -b_f``, so that the units start with memory time scales spread
    between 1 and ``T_max`` steps instead of the ``1 / (1 - sigmoid(b_f))``
    ≈ 1.4-3.7 steps of ``b_f`` = 0-1 (replaces ``forget_bias``).

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cell = jrnn.lstm(6, forget_bias=1.0)
      >>> params = cell.init(jax.random.PRNGKey(0), input_size=3)
      >>> carry, hs = jrnn.unroll(cell, params, jnp.ones((4, 2, 3)))
      >>> hs.shape, carry.c.shape
      ((4, 2, 6), (2, 6))
      >>> cellp = jrnn.lstm(6, proj_size=2)
      >>> paramsp = cellp.init(jax.random.PRNGKey(0), input_size=3)
      >>> {k: v.shape for k, v in sorted(paramsp.items())}
      {'W': (3, 24), 'W_h': (2, 24), 'W_hr': (6, 2), 'b': (24,)}
      >>> carry, hs = jrnn.unroll(cellp, paramsp, jnp.ones((4, 2, 3)))
      >>> hs.shape, carry.h.shape, carry.c.shape, cellp.hidden_size, cellp.cell_size
      ((4, 2, 2), (2, 2), (2, 6), 2, 6)
    """
    positive_int("hidden_size", hidden_size)
    H = hidden_size
    P = None if not proj_size else positive_int("proj_size", proj_size)
    if chrono is not None:
        positive_int("chrono", chrono, 3)
        if forget_bias:
            raise ValueError("chrono sets the forget biases itself; leave forget_bias at 0")
    R = H if P is None else P  # the width of h: what W_h reads and the cell outputs
    base_init = _uniform_init(4, H, init_scale, with_b_h=False)
    scale = 1.0 / H**0.5 if init_scale is None else float(init_scale)

    def init(key: Array, input_size: int, dtype=jnp.float32) -> Params:
        k_base, k_h, k_hr = jax.random.split(key, 3)
        params = base_init(key if P is None else k_base, input_size, dtype)
        if P is not None:
            # PyTorch's default for every weight: U(-1/sqrt(H), 1/sqrt(H)).
            params["W_h"] = jax.random.uniform(k_h, (P, 4 * H), dtype, -scale, scale)
            params["W_hr"] = jax.random.uniform(k_hr, (H, P), dtype, -scale, scale)
        if forget_bias:
            params["b"] = params["b"].at[H : 2 * H].add(forget_bias)
        if chrono is not None:
            u = jax.random.uniform(jax.random.fold_in(key, 7), (H,), dtype, 1.0, chrono - 1.0)
            b_f = jnp.log(u)
            params["b"] = params["b"].at[H : 2 * H].set(b_f).at[:H].set(-b_f)
        return params

    def initial_carry(batch_shape=(), dtype=jnp.float32) -> LSTMCarry:
        # Two distinct buffers: a shared one could not be donated twice.
        return LSTMCarry(_zeros_carry(R)(batch_shape, dtype), _zeros_carry(H)(batch_shape, dtype))

    def step(params: Params, carry: LSTMCarry, x_proj: Array):
        # sigmoid(i, f, o) and tanh(g) in one pass (gates.lstm_gates), then
        # c = f * c + i * g and h = o * tanh(c).
        h, c, _ = lstm_update(x_proj + carry.h @ params["W_h"], carry.c, H)
        return LSTMCarry(h, c), h

    def step_projected(params: Params, carry: LSTMCarry, x_proj: Array):
        # The same update, then h = (o * tanh(c)) W_hr: P wide.
        m, c, _ = lstm_update(x_proj + carry.h @ params["W_h"], carry.c, H)
        h = m @ params["W_hr"]
        return LSTMCarry(h, c), h

    if P is not None:
        return Cell(
            kind="lstm",
            hidden_size=P,
            num_gates=4,
            init=init,
            initial_carry=initial_carry,
            project=_project,
            step=step_projected,
            hidden=lambda carry: carry.h,
            cell_size=H,
        )
    return Cell(
        kind="lstm",
        hidden_size=H,
        num_gates=4,
        init=init,
        initial_carry=initial_carry,
        project=_project,
        step=step,
        hidden=lambda carry: carry.h,
        sequence=backward.lstm_sequence(H),
        sequence_step=step,
    )


@interned
def gru(hidden_size: int, *, init_scale: float | None = None) -> Cell:
    r"""Gated recurrent unit, gate order (r, z, n) as in PyTorch.

    With ``a = W x_t + b`` and ``u = W_h h_{t-1} + b_h``, each split into
    three ``[B, H]`` blocks (r, z, n):

    .. math::
        r = \sigma(a_r + u_r),\quad z = \sigma(a_z + u_z),\quad
        n = \tanh(a_n + r \odot u_n) \\
        h_t = (1 - z) \odot n + z \odot h_{t-1}

    The reset gate multiplies the recurrent product *after* it is taken
    (PyTorch/cuDNN's variant), which is why the recurrent bias ``b_h`` is kept
    apart.  Shapes: ``W: [D, 3H]``, ``W_h: [H, 3H]``, ``b, b_h: [3H]``.
    ``torch.nn.GRU``: ``W = weight_ih.T``, ``W_h = weight_hh.T``,
    ``b = bias_ih``, ``b_h = bias_hh``.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cell = jrnn.gru(5)
      >>> params = cell.init(jax.random.PRNGKey(0), input_size=2)
      >>> sorted(params)
      ['W', 'W_h', 'b', 'b_h']
    """
    positive_int("hidden_size", hidden_size)
    H = hidden_size

    def step(params: Params, h: Array, x_proj: Array):
        h, _, _ = gru_update(x_proj, h @ params["W_h"] + params["b_h"], h, H)
        return h, h

    return Cell(
        kind="gru",
        hidden_size=H,
        num_gates=3,
        init=_uniform_init(3, H, init_scale, with_b_h=True),
        initial_carry=_zeros_carry(H),
        project=_project,
        step=step,
        hidden=_identity_hidden,
        sequence=backward.gru_sequence(H),
        sequence_step=step,
    )


# --------------------------------------------------------------------------
# Cells whose gates read only x_t: h_t = a_t * h_{t-1} + b_t, linear in the state.
# No W_h: the step is elementwise, and the same recurrence runs as a parallel scan
# (jrnn.unroll(..., method="associative"), jrnn.core.parallel) from ``cell.affine``.


def _input_init(widths: Sequence[tuple[str, str, tuple[int, int]]], hidden_size: int,
                init_scale):
    """Weights and biases ~ U(-s, s), s = 1/sqrt(H) as the other cells (or ``init_scale``).

    ``widths``: ``(weight name, bias name, (rows, columns))`` for each matrix;
    ``rows = 0`` means the layer's ``input_size``.
    """
    scale = 1.0 / hidden_size**0.5 if init_scale is None else float(init_scale)

    def init(key: Array, input_size: int, dtype=jnp.float32) -> Params:
        positive_int("input_size", input_size)
        params = {}
        for k, (w, b, (rows, cols)) in zip(jax.random.split(key, len(widths)), widths):
            k_w, k_b = jax.random.split(k)
            params[w] = jax.random.uniform(k_w, (rows or input_size, cols), dtype, -scale, scale)
            params[b] = jax.random.uniform(k_b, (cols,), dtype, -scale, scale)
        return params

    return init


def _affine_step(affine: Callable):
    """The sequential step of ``h_t = a_t * h_{t-1} + b_t``, with ``(a_t, b_t) = affine(x_t)``."""

    def step(params: Params, h: Array, x_proj: Array):
        a, b = affine(params, x_proj)
        h = a * h + b
        return h, h

    return step


def _gated_linear_cell(kind: str, hidden_size: int, num_gates: int, init, affine,
                       project=_project) -> Cell:
    return Cell(
        kind=kind,
        hidden_size=hidden_size,
        num_gates=num_gates,
        init=init,
        initial_carry=_zeros_carry(hidden_size),
        project=project,
        step=_affine_step(affine),
        hidden=_identity_hidden,
        affine=affine,
    )


@interned
def mingru(hidden_size: int, *, init_scale: float | None = None) -> Cell:
    r"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): a GRU whose gates read only x_t.

    With ``a = W x_t + b`` split into two ``[B, H]`` blocks (z, h̃):

    .. math::
        z_t = \sigma(a_z), \qquad \tilde h_t = a_{\tilde h} \\
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

    This is the paper's minimal version: the candidate has no activation
    (the paper's ``g`` and its log-space form are not used; jrnn's parallel
    scan multiplies the coefficients directly).  Neither the gate nor the
    candidate sees ``h_{t-1}``, so the recurrence is linear in the state,
    ``h_t = a_t h_{t-1} + b_t`` with ``a_t = 1 - z_t``, ``b_t = z_t h̃_t``:
    ``jrnn.unroll(..., method="associative")`` runs it as a parallel scan
    (``cell.affine`` gives ``a_t, b_t``), and the default ``"auto"`` runs the
    sequential ``step``.  Shapes: ``W: [D, 2H]``, ``b: [2H]`` (no ``W_h``),
    carry ``h: [B, H]``; every weight and bias starts ~ U(-1/sqrt(H), 1/sqrt(H))
    (``init_scale`` sets another bound).

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cell = jrnn.mingru(8)
      >>> params = cell.init(jax.random.PRNGKey(0), input_size=3)
      >>> {k: v.shape for k, v in sorted(params.items())}
      {'W': (3, 16), 'b': (16,)}
      >>> xs = jax.random.normal(jax.random.PRNGKey(1), (5, 2, 3))
      >>> carry, hs = jrnn.unroll(cell, params, xs)
      >>> hs.shape, carry.shape
      ((5, 2, 8), (2, 8))
      >>> _, hs_par = jrnn.unroll(cell, params, xs, method="associative")
      >>> bool(jnp.allclose(hs, hs_par, atol=1e-5))
      True
    """
    positive_int("hidden_size", hidden_size)
    H = hidden_size

    def affine(params: Params, x_proj: Array):
        a_z = x_proj[..., :H]
        # 1 - sigmoid(a) = sigmoid(-a), without the cancellation when z is near 1.
        return jax.nn.sigmoid(-a_z), jax.nn.sigmoid(a_z) * x_proj[..., H:]

    init = _input_init([("W", "b", (0, 2 * H))], H, init_scale)
    return _gated_linear_cell("mingru", H, 2, init, affine)


@interned
def minlstm(hidden_size: int, *, init_scale: float | None = None) -> Cell:
    r"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): normalised gates that read only x_t.

    With ``a = W x_t + b`` split into three ``[B, H]`` blocks (f, i, h̃):

    .. math::
        f_t = \sigma(a_f), \quad i_t = \sigma(a_i), \quad \tilde h_t = a_{\tilde h} \\
        f'_t = \frac{f_t}{f_t + i_t}, \quad i'_t = \frac{i_t}{f_t + i_t} \\
        h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t

    The paper's minimal (length-independent scaling) version, with no
    activation on the candidate.  ``f'_t`` is computed as
    ``sigmoid(log f_t - log i_t)``, the same number without ``0 / 0`` where
    both gates underflow.  Linear in the state (``a_t = f'_t``,
    ``b_t = i'_t h̃_t``), so ``method="associative"`` runs it as a parallel
    scan; ``"auto"`` runs the sequential ``step``.  Shapes: ``W: [D, 3H]``,
    ``b: [3H]`` (no ``W_h``), carry ``h: [B, H]``; init as :func:`mingru`.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cell = jrnn.minlstm(4)
      >>> params = cell.init(jax.random.PRNGKey(0), input_size=2)
      >>> params["W"].shape, cell.num_gates
      ((2, 12), 3)
      >>> carry, hs = jrnn.unroll(cell, params, jnp.ones((6, 3, 2)), method="associative")
      >>> hs.shape
      (6, 3, 4)
    """
    positive_int("hidden_size", hidden_size)
    H = hidden_size

    def affine(params: Params, x_proj: Array):
        log_f = jax.nn.log_sigmoid(x_proj[..., :H])
        log_i = jax.nn.log_sigmoid(x_proj[..., H : 2 * H])
        # f / (f + i) = sigmoid(log f - log i): no 0 / 0 when both gates underflow.
        return jax.nn.sigmoid(log_f - log_i), jax.nn.sigmoid(log_i - log_f) * x_proj[..., 2 * H :]

    init = _input_init([("W", "b", (0, 3 * H))], H, init_scale)
    return _gated_linear_cell("minlstm", H, 3, init, affine)


# Griffin's RG-LRU: a_t = a^(c r_t), and the largest gradient its sqrt(1 - a_t^2) passes back.
RGLRU_C = 8.0
RGLRU_MAX_GRADIENT = 1000.0


@jax.custom_jvp
def _sqrt_bounded(x: Array) -> Array:
    return jnp.sqrt(x)


@_sqrt_bounded.defjvp
def _sqrt_bounded_jvp(primals, tangents):
    # d sqrt(x) = dx / (2 sqrt(x)) is unbounded as a_t -> 1 (r_t -> 0); Griffin's code caps
    # it at 1000 (sqrt(x) held >= 1 / 2000), which changes nothing while 1 - a_t^2 > 2.5e-7.
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    return y, dx / (2 * jnp.maximum(y, 1 / (2 * RGLRU_MAX_GRADIENT)))


@interned
def rglru(hidden_size: int, *, init_scale: float | None = None) -> Cell:
    r"""Griffin's real-gated linear recurrent unit, RG-LRU (De et al. 2024).

    From "Griffin: Mixing Gated Linear Recurrences with Local Attention for
    Efficient Language Models".  The input is first projected to the state's width, ``u_t = W x_t + b``
    (``i_t \odot u_t`` needs ``H`` features; in Griffin this is the
    recurrent block's linear branch, whose short temporal convolution is
    left out here).  Then, elementwise over the ``H`` units:

    .. math::
        r_t = \sigma(W_a u_t + b_a), \qquad i_t = \sigma(W_x u_t + b_x) \\
        a_t = a^{c r_t}, \quad a = \sigma(\Lambda), \quad c = 8 \\
        h_t = a_t \odot h_{t-1} + \sqrt{1 - a_t^2} \odot (i_t \odot u_t)

    computed as ``log a_t = -c r_t softplus(-Λ)`` and ``1 - a_t^2 =
    -expm1(2 log a_t)``; the gradient of the square root is capped at 1000
    as in Griffin's code (it is unbounded as ``a_t -> 1``).  ``Λ`` starts so
    that ``a^c`` is uniform in ``[0.9, 0.999]``, as in the paper; the
    weights and biases ~ U(-1/sqrt(H), 1/sqrt(H)) (``init_scale`` sets
    another bound for them, not for ``Λ``).  Linear in the state
    (``method="associative"`` runs it as a parallel scan; ``"auto"`` runs the
    sequential ``step``).  Everything before the recurrence has no time
    dependency, so ``cell.project`` computes ``[W_a u + b_a, W_x u + b_x, u]``
    (``[..., 3H]``) outside the loop.  Shapes: ``W: [D, H]``, ``b: [H]``,
    ``W_a, W_x: [H, H]``, ``b_a, b_x, Lambda: [H]``, carry ``h: [B, H]``.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cell = jrnn.rglru(4)
      >>> params = cell.init(jax.random.PRNGKey(0), input_size=3)
      >>> sorted(params)
      ['Lambda', 'W', 'W_a', 'W_x', 'b', 'b_a', 'b_x']
      >>> a_c = jax.nn.sigmoid(params["Lambda"]) ** 8
      >>> bool(((a_c >= 0.9 - 1e-6) & (a_c <= 0.999 + 1e-6)).all())
      True
      >>> jrnn.unroll(cell, params, jnp.ones((5, 2, 3)))[1].shape
      (5, 2, 4)
    """
    positive_int("hidden_size", hidden_size)
    H = hidden_size
    base_init = _input_init([("W", "b", (0, H)), ("W_a", "b_a", (H, H)), ("W_x", "b_x", (H, H))],
                            H, init_scale)

    def init(key: Array, input_size: int, dtype=jnp.float32) -> Params:
        k_base, k_lam = jax.random.split(key)
        params = base_init(k_base, input_size, dtype)
        # a^c ~ U(0.9, 0.999): log a = log(u) / c, and Lambda = logit(a).
        log_a = jnp.log(jax.random.uniform(k_lam, (H,), dtype, 0.9, 0.999)) / RGLRU_C
        params["Lambda"] = log_a - jnp.log(-jnp.expm1(log_a))
        return params

    def project(params: Params, xs: Array) -> Array:
        u = xs @ params["W"] + params["b"]
        gates = [u @ params["W_a"] + params["b_a"], u @ params["W_x"] + params["b_x"]]
        return jnp.concatenate([*gates, u], axis=-1)

    def affine(params: Params, x_proj: Array):
        r = jax.nn.sigmoid(x_proj[..., :H])
        i = jax.nn.sigmoid(x_proj[..., H : 2 * H])
        log_a = -RGLRU_C * r * jax.nn.softplus(-params["Lambda"])
        gain = _sqrt_bounded(-jnp.expm1(2 * log_a))  # sqrt(1 - a_t^2)
        return jnp.exp(log_a), gain * (i * x_proj[..., 2 * H :])

    return _gated_linear_cell("rglru", H, 3, init, affine, project)


# --------------------------------------------------------------------------
# xLSTM (Beck et al. 2024): exponential input gates, kept finite by a log-space stabiliser
# m_t that the state is divided by (c~_t = c_t e^{-m_t}); every output is a ratio in
# which e^{-m_t} cancels, so m_t changes the numerics, never the values.


class SLSTMCarry(NamedTuple):
    """The sLSTM's state, each ``[..., H]``: output ``h``, cell ``c``, normaliser ``n``, stabiliser ``m``."""

    h: Array
    c: Array
    n: Array
    m: Array


class MLSTMCarry(NamedTuple):
    """The mLSTM's state: the matrix memory ``C: [..., heads, d, d]`` (values x keys), the
    normaliser ``n: [..., heads, d]``, the stabiliser ``m: [..., heads]`` and the last output
    ``h: [..., H]`` (``d = H / heads``; ``h`` is kept for :attr:`Cell.hidden`)."""

    C: Array
    n: Array
    m: Array
    h: Array


def _head_size(hidden_size: int, num_heads: int) -> int:
    positive_int("hidden_size", hidden_size)
    positive_int("num_heads", num_heads)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads "
                         f"({num_heads})")
    return hidden_size // num_heads


def _batch(batch_shape) -> tuple:
    return (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)


def _forget_biases(n: int, dtype) -> Array:
    # The official xLSTM code's forget-gate bias init: linspace(3, 6), sigmoid 0.95 .. 0.998,
    # so the memory starts long.
    return jnp.linspace(3.0, 6.0, n, dtype=dtype)


def _block_recurrent(R: Array, h: Array) -> Array:
    """``h R`` for the block-diagonal ``R: [heads, d, 4d]``, laid out as the gates: ``[..., 4H]``.

    Head ``k``'s units read only head ``k``'s part of ``h``; its ``4d`` columns are
    its units' (i, f, z, o) pre-activations, put back into the four ``H``-wide gate blocks.
    """
    heads, d, _ = R.shape
    batch = h.shape[:-1]
    r = jnp.einsum("...kd,kde->...ke", h.reshape(*batch, heads, d), R)  # [..., heads, 4d]
    r = jnp.swapaxes(r.reshape(*batch, heads, 4, d), -3, -2)  # [..., 4, heads, d]
    return r.reshape(*batch, 4 * heads * d)


@interned
def slstm(hidden_size: int, *, num_heads: int = 1, init_scale: float | None = None) -> Cell:
    r"""sLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory"): scalar memory
    with an exponential input gate and a normaliser state.

    With ``a = W x_t + b + h_{t-1} R`` split into four ``[B, H]`` blocks (i, f, z, o):

    .. math::
        \log i_t = a_i, \quad \log f_t = \log \sigma(a_f), \quad
        z_t = \tanh(a_z), \quad o_t = \sigma(a_o) \\
        m_t = \max(\log f_t + m_{t-1}, \log i_t), \quad
        i'_t = e^{\log i_t - m_t}, \quad f'_t = e^{\log f_t + m_{t-1} - m_t} \\
        c_t = f'_t \odot c_{t-1} + i'_t \odot z_t, \quad
        n_t = f'_t \odot n_{t-1} + i'_t, \quad
        h_t = o_t \odot c_t / n_t

    The input gate is the paper's exponential ``i_t = exp(a_i)``; the forget
    gate is the sigmoid form (the official code's default), taken in log
    space.  ``m_t`` is the paper's stabiliser: ``c_t`` and ``n_t`` are the
    paper's states times ``e^{-m_t}``, so ``c_t / n_t`` is unchanged and no
    ``exp`` overflows.  As in the official code (there for the whole batch,
    here per unit), an empty state (``n_{t-1} = 0``, e.g. the zero initial
    carry) has nothing to keep and restarts the stabiliser at ``m_t = log
    i_t``; from then on ``n_t >= 1``.  ``R`` is
    block-diagonal by heads: stored as ``R: [heads, H/heads, 4H/heads]``,
    head ``k``'s units read only head ``k``'s part of ``h_{t-1}`` (columns in
    (i, f, z, o) order within each head).

    ``h_{t-1}`` feeds every gate, so the recurrence is not linear in its
    state: it runs with the sequential scan only (``method="associative"``
    and ``"doubling"`` are refused).  Shapes: ``W: [D, 4H]``, ``b: [4H]``,
    ``R: [heads, H/heads, 4H/heads]``; the carry is :class:`SLSTMCarry`
    ``(h, c, n, m)``, each ``[B, H]``.  Weights and biases start ~
    U(-1/sqrt(H), 1/sqrt(H)) (``init_scale`` sets another bound), except the
    forget-gate biases, ``linspace(3, 6)`` over the units.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cell = jrnn.slstm(8, num_heads=2)
      >>> params = cell.init(jax.random.PRNGKey(0), input_size=3)
      >>> {k: v.shape for k, v in sorted(params.items())}
      {'R': (2, 4, 16), 'W': (3, 32), 'b': (32,)}
      >>> carry, hs = jrnn.unroll(cell, params, jnp.ones((5, 2, 3)))
      >>> hs.shape, carry.n.shape, bool((carry.n >= 1).all())
      ((5, 2, 8), (2, 8), True)
    """
    d = _head_size(hidden_size, num_heads)
    H = hidden_size
    base_init = _input_init([("W", "b", (0, 4 * H))], H, init_scale)
    scale = 1.0 / H**0.5 if init_scale is None else float(init_scale)

    def init(key: Array, input_size: int, dtype=jnp.float32) -> Params:
        k_base, k_r = jax.random.split(key)
        params = base_init(k_base, input_size, dtype)
        params["b"] = params["b"].at[H : 2 * H].set(_forget_biases(H, dtype))
        params["R"] = jax.random.uniform(k_r, (num_heads, d, 4 * d), dtype, -scale, scale)
        return params

    def initial_carry(batch_shape=(), dtype=jnp.float32) -> SLSTMCarry:
        shape = (*_batch(batch_shape), H)
        return SLSTMCarry(*(jnp.zeros(shape, dtype) for _ in range(4)))

    def step(params: Params, carry: SLSTMCarry, x_proj: Array):
        a = x_proj + _block_recurrent(params["R"], carry.h)
        log_i = a[..., :H]
        log_f = jax.nn.log_sigmoid(a[..., H : 2 * H])
        # log(f_t e^{m_{t-1}}); an empty state (n = 0) has nothing to keep: restart at log i_t.
        keep = jnp.where(carry.n == 0, log_i, log_f + carry.m)
        m = jnp.maximum(keep, log_i)
        f, i = jnp.exp(keep - m), jnp.exp(log_i - m)  # both <= 1: no overflow
        c = f * carry.c + i * jnp.tanh(a[..., 2 * H : 3 * H])
        n = f * carry.n + i
        h = jax.nn.sigmoid(a[..., 3 * H :]) * c / n
        return SLSTMCarry(h, c, n, m), h

    return Cell(
        kind="slstm",
        hidden_size=H,
        num_gates=4,
        init=init,
        initial_carry=initial_carry,
        project=_project,
        step=step,
        hidden=lambda carry: carry.h,
    )


def _mlstm_readout(num: Array, den: Array, m: Array) -> Array:
    """``num / max(|den|, e^{-m})``: the paper's ``C q / max(|n^T q|, 1)`` on stabilised states.

    ``num: [..., d]``, ``den, m: [...]``.  Numerator and denominator are both
    scaled by ``e^{min(m, 0)}``, so no ``exp`` overflows however small ``m``
    gets (a long closed input gate), and the denominator is never 0 for ``m < 0``.
    """
    s = jnp.minimum(m, 0.0)
    scale = jnp.exp(s)
    return num * (scale / jnp.maximum(jnp.abs(den) * scale, jnp.exp(s - m)))[..., None]


@interned
def mlstm(hidden_size: int, *, num_heads: int = 1, init_scale: float | None = None) -> Cell:
    r"""mLSTM (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory"): a matrix memory
    per head, written with an exponential input gate; its gates read only x_t.

    With ``a = W x_t + b`` split into ``q, k, v, o`` (``[B, H]`` each, the first three
    as ``heads`` heads of ``d = H / heads``) and the per-head gates ``a_i, a_f: [B, heads]``:

    .. math::
        k_t \leftarrow k_t / \sqrt{d}, \quad \log i_t = a_i, \quad
        \log f_t = \log \sigma(a_f), \quad o_t = \sigma(a_o) \\
        m_t = \max(\log f_t + m_{t-1}, \log i_t), \quad
        i'_t = e^{\log i_t - m_t}, \quad f'_t = e^{\log f_t + m_{t-1} - m_t} \\
        C_t = f'_t C_{t-1} + i'_t\, v_t k_t^\top, \quad
        n_t = f'_t n_{t-1} + i'_t k_t \\
        \tilde h_t = \frac{C_t q_t}{\max(|n_t^\top q_t|, e^{-m_t})}, \quad
        h_t = o_t \odot \tilde h_t

    per head.  ``C_t, n_t`` are the paper's states times ``e^{-m_t}`` (its
    stabiliser), so the denominator ``max(|n^T q|, e^{-m_t})`` is exactly the
    paper's ``max(|n^T q|, 1)`` on the unstabilised states.  The forget gate
    is the sigmoid form (the official code's default).  The cell is the
    paper's mLSTM memory cell only: the block's up-projection, convolution,
    group norm and skip are left to the model around it.

    The gates read only ``x_t``, so the whole sequence has a **parallel
    form** (the paper's): ``h~ = ((Q K^T) ⊙ D) V`` normalised, with the
    causal decay ``D[t, s] = exp(log f_{s+1} + ... + log f_t + log i_s - m_t)``
    built in log space and stabilised per row.
    ``jrnn.unroll(..., method="associative")`` runs it (``cell.parallel``,
    including the initial carry's contribution, ``lengths`` and
    ``reverse``); it is quadratic in ``T`` (``[B, heads, T, T]`` weights) and
    gives the sequential scan's values and final carry to rounding.  The
    default ``"auto"`` runs the sequential ``step``.

    Shapes: ``W: [D, 4H + 2 heads]``, ``b: [4H + 2 heads]`` (columns ``q, k,
    v, o``, then ``a_i``, ``a_f`` per head); the carry is
    :class:`MLSTMCarry` ``(C [B, heads, d, d], n [B, heads, d], m [B, heads],
    h [B, H])``.  Weights and biases start ~ U(-1/sqrt(H), 1/sqrt(H))
    (``init_scale`` sets another bound), except the forget-gate biases,
    ``linspace(3, 6)`` over the heads (the official code's init).

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cell = jrnn.mlstm(8, num_heads=2)
      >>> params = cell.init(jax.random.PRNGKey(0), input_size=3)
      >>> params["W"].shape
      (3, 36)
      >>> xs = jax.random.normal(jax.random.PRNGKey(1), (6, 2, 3))
      >>> carry, hs = jrnn.unroll(cell, params, xs)
      >>> hs.shape, carry.C.shape, carry.m.shape
      ((6, 2, 8), (2, 2, 4, 4), (2, 2))
      >>> carry_par, hs_par = jrnn.unroll(cell, params, xs, method="associative")
      >>> bool(jnp.allclose(hs, hs_par, atol=1e-5)), bool(jnp.allclose(carry.C, carry_par.C, atol=1e-5))
      (True, True)
    """
    d = _head_size(hidden_size, num_heads)
    H, nh = hidden_size, num_heads
    base_init = _input_init([("W", "b", (0, 4 * H + 2 * nh))], H, init_scale)

    def init(key: Array, input_size: int, dtype=jnp.float32) -> Params:
        params = base_init(key, input_size, dtype)
        params["b"] = params["b"].at[4 * H + nh :].set(_forget_biases(nh, dtype))
        return params

    def initial_carry(batch_shape=(), dtype=jnp.float32) -> MLSTMCarry:
        batch = _batch(batch_shape)
        return MLSTMCarry(jnp.zeros((*batch, nh, d, d), dtype), jnp.zeros((*batch, nh, d), dtype),
                          jnp.zeros((*batch, nh), dtype), jnp.zeros((*batch, H), dtype))

    def parts(a: Array):
        """``[..., 4H + 2 heads]`` -> ``q, k, v: [..., heads, d]``, ``o: [..., H]``,
        ``log i, log f: [..., heads]``."""
        heads = lambda x: x.reshape(*x.shape[:-1], nh, d)
        q, k, v = heads(a[..., :H]), heads(a[..., H : 2 * H]), heads(a[..., 2 * H : 3 * H])
        o = jax.nn.sigmoid(a[..., 3 * H : 4 * H])
        log_i, log_f = a[..., 4 * H : 4 * H + nh], jax.nn.log_sigmoid(a[..., 4 * H + nh :])
        return q, k / d**0.5, v, o, log_i, log_f

    def step(params: Params, carry: MLSTMCarry, x_proj: Array):
        q, k, v, o, log_i, log_f = parts(x_proj)
        m = jnp.maximum(log_f + carry.m, log_i)
        f = jnp.exp(log_f + carry.m - m)[..., None]  # [..., heads, 1]: both <= 1
        i = jnp.exp(log_i - m)[..., None]
        C = f[..., None] * carry.C + i[..., None] * (v[..., :, None] * k[..., None, :])
        n = f * carry.n + i * k
        num = jnp.einsum("...vk,...k->...v", C, q)
        h_tilde = _mlstm_readout(num, jnp.sum(n * q, axis=-1), m)
        h = o * h_tilde.reshape(*h_tilde.shape[:-2], H)
        return MLSTMCarry(C, n, m, h), h

    def parallel(params: Params, xs_proj: Array, carry: MLSTMCarry, ends: Array):
        """All ``T`` steps at once (forward in time): ``xs_proj: [T, B, 4H + 2 heads]`` ->
        ``(carry after ends[b] steps of sequence b, hs: [T, B, H])``."""
        del params  # everything is in xs_proj
        T, B = xs_proj.shape[:2]
        carry = jax.tree_util.tree_map(lambda c: jnp.asarray(c, xs_proj.dtype), carry)
        q, k, v, o, log_i, log_f = parts(xs_proj)
        Q, K, V = (jnp.moveaxis(x, 0, 2) for x in (q, k, v))  # [B, heads, T, d]
        log_i, log_f = jnp.moveaxis(log_i, 0, -1), jnp.moveaxis(log_f, 0, -1)  # [B, heads, T]
        t, s = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
        # seg[t, s] = log f_{s+1} + ... + log f_t, summed along each column (not as a
        # difference of two cumulative sums, which loses the small ones in long sequences).
        seg = jnp.cumsum(jnp.where(t > s, log_f[..., :, None], 0.0), axis=-2)
        log_d = jnp.where(t >= s, seg + log_i[..., None, :], -jnp.inf)  # [B, heads, T, T]
        log_g = jnp.cumsum(log_f, axis=-1) + carry.m[..., None]  # the initial state's weight
        m = jnp.maximum(log_g, jnp.max(log_d, axis=-1))  # = the recurrent m_t, [B, heads, T]
        D, g = jnp.exp(log_d - m[..., None]), jnp.exp(log_g - m)
        S = jnp.einsum("bhtk,bhsk->bhts", Q, K) * D
        num = S @ V + g[..., None] * jnp.einsum("bhvk,bhtk->bhtv", carry.C, Q)
        den = jnp.sum(S, axis=-1) + g * jnp.einsum("bhk,bhtk->bht", carry.n, Q)
        h_tilde = jnp.moveaxis(_mlstm_readout(num, den, m), 2, 0)  # [T, B, heads, d]
        hs = o * h_tilde.reshape(T, B, H)
        # The state after ends[b] steps: row e = ends[b] - 1 of the same weights.
        e = jnp.clip(ends - 1, 0, T - 1)
        rows = jnp.arange(B)
        d_e = jnp.swapaxes(D, 1, 2)[rows, e]  # [B, heads, T]
        g_e, m_e = g[rows, :, e], m[rows, :, e]  # [B, heads]
        final = MLSTMCarry(
            g_e[..., None, None] * carry.C + jnp.einsum("bhs,bhsv,bhsk->bhvk", d_e, V, K),
            g_e[..., None] * carry.n + jnp.einsum("bhs,bhsk->bhk", d_e, K),
            m_e, hs[e, rows])
        started = ends > 0  # a sequence of length 0 keeps its initial carry
        return jax.tree_util.tree_map(
            lambda new, old: jnp.where(started.reshape(B, *(1,) * (new.ndim - 1)), new, old),
            final, carry), hs

    return Cell(
        kind="mlstm",
        hidden_size=H,
        num_gates=4,
        init=init,
        initial_carry=initial_carry,
        project=_project,
        step=step,
        hidden=lambda carry: carry.h,
        parallel=parallel,
    )


# The one list of cell kinds a name can mean (the configuration, the command line and
# the Flax modules read it).
CELL_FACTORIES: dict[str, Callable[..., Cell]] = {"linear": linear, "elman": elman, "lstm": lstm,
                                                  "gru": gru, "mingru": mingru,
                                                  "minlstm": minlstm, "rglru": rglru,
                                                  "slstm": slstm, "mlstm": mlstm}
CELL_KINDS = names.agree("CELL_KINDS", CELL_FACTORIES)


def make_cell(
    kind: str,
    hidden_size: int,
    *,
    activation: Union[str, Callable] = "tanh",
    forget_bias: float = 0.0,
    init_scale: float | None = None,
    proj_size: int | None = None,
    chrono: int | None = None,
) -> Cell:
    """Build a cell by name: ``"linear"``, ``"elman"``, ``"lstm"``, ``"gru"``, ``"mingru"``,
    ``"minlstm"``, ``"rglru"``, ``"slstm"`` or ``"mlstm"`` (:data:`CELL_KINDS`).  The
    xLSTM cells get one head here (``jrnn.slstm(H, num_heads=...)`` for more).

    Example:
      >>> import jrnn
      >>> cell = jrnn.make_cell("elman", 4, activation="relu")
      >>> cell.kind, cell.activation
      ('elman', 'relu')
    """
    if proj_size and kind != "lstm":
        raise ValueError(f"proj_size is for LSTM cells only, got kind {kind!r}")
    if chrono is not None and kind != "lstm":
        raise ValueError(f"chrono initialization is for LSTM cells only, got kind {kind!r}")
    if kind == "linear":
        return linear(hidden_size, init_scale=init_scale)
    if kind == "elman":
        return elman(hidden_size, activation, init_scale=init_scale)
    if kind == "lstm":
        return lstm(hidden_size, forget_bias=forget_bias, init_scale=init_scale,
                    proj_size=proj_size, chrono=chrono)
    if kind in ("gru", "mingru", "minlstm", "rglru", "slstm", "mlstm"):
        return CELL_FACTORIES[kind](hidden_size, init_scale=init_scale)
    raise ValueError(f"unknown cell kind {kind!r}; expected one of {list(CELL_KINDS)}")
