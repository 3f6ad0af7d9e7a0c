"""Recurrent cells: each one a NamedTuple of pure functions made by a factory.

A cell knows one timestep of the recurrence and nothing else.  Every cell has

* ``init(key, input_size, dtype=float32) -> params`` -- a dict of arrays named
  as in the lecture: ``W`` (input_size x G*H), ``W_h`` (H x G*H), ``b`` (G*H),
  where G is the number of gates (1 for linear/Elman, 4 for the LSTM, 3 for
  the GRU).  The GRU also has ``b_h`` (G*H), its recurrent bias.
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

What a cell *is* lives in typed fields, never in strings to parse:
``kind`` is the family (``"linear"``, ``"elman"``, ``"lstm"``, ``"gru"``,
``"diagonal"``), ``activation`` the named activation of a linear or Elman
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

from jrnn.core import backward
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


# The one list of cell kinds a name can mean (the configuration, the command line and
# the Flax modules read it).
CELL_FACTORIES: dict[str, Callable[..., Cell]] = {"linear": linear, "elman": elman, "lstm": lstm,
                                                  "gru": gru}
CELL_KINDS = tuple(CELL_FACTORIES)


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
    """Build a cell by name: ``"linear"``, ``"elman"``, ``"lstm"`` or ``"gru"``.

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
    if kind == "gru":
        return gru(hidden_size, init_scale=init_scale)
    raise ValueError(f"unknown cell kind {kind!r}; expected one of {list(CELL_KINDS)}")
