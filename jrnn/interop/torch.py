r"""Weights and states between jrnn and ``torch.nn.RNN`` / ``LSTM`` / ``GRU``.

PyTorch computes, for layer ``l`` of a multi-layer module (column vectors),

.. math::
    z_t = W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}

with the gate blocks of ``weight_ih_l{l}`` stacked in the order (i, f, g, o)
for the LSTM and (r, z, n) for the GRU -- the order jrnn's cells use.  jrnn
uses row vectors (``x @ W``), so the exchange is a transpose plus, for RNN and
LSTM, merging PyTorch's two biases into jrnn's one:

====================  ===============================  ========================
jrnn                  from PyTorch                     to PyTorch
====================  ===============================  ========================
``W``                 ``weight_ih_l{l}.T``             ``weight_ih_l{l} = W.T``
``W_h``               ``weight_hh_l{l}.T``             ``weight_hh_l{l} = W_h.T``
``b`` (RNN, LSTM)     ``bias_ih_l{l} + bias_hh_l{l}``  ``bias_ih = b``, ``bias_hh = 0``
``b`` (GRU)           ``bias_ih_l{l}``                 ``bias_ih_l{l} = b``
``b_h`` (GRU)         ``bias_hh_l{l}``                 ``bias_hh_l{l} = b_h``
====================  ===============================  ========================

The GRU keeps both biases because its reset gate multiplies
:math:`W_{hn} h + b_{hn}` as a whole.  States: PyTorch's ``h_n`` is
``[num_layers, B, H]`` (and ``c_n`` for the LSTM); jrnn's stack carry is a
list with one ``[B, H]`` array (or :class:`~jrnn.core.gates.LSTMCarry`) per layer.

**Projections** (``LSTM(..., proj_size=P)``): jrnn's ``jrnn.lstm(H, proj_size=P)``
with ``W_hr = weight_hr_l{l}.T`` (``[H, P]``); ``W_h`` is then ``[P, 4H]`` and
layers after the first read ``P`` features.  ``h_n`` is ``[layers, B, P]``,
``c_n`` stays ``[layers, B, H]``.

**Bidirectional modules** (``bidirectional=True``): the reverse direction's
weights are the same names with the suffix ``_reverse``.  jrnn holds such a
module as lists of ``(forward, backward)`` pairs, one per layer -- cells,
params and carries alike -- for :func:`jrnn.bidirectional`; flattened
layer-major they are PyTorch's order (``h_n[2 l]`` is layer ``l`` forward,
``h_n[2 l + 1]`` its backward direction).  Layers after the first read
``2 H`` (``2 P`` with projections) features.

``torch`` is imported inside the functions that need it, never when jrnn is
imported; install it with ``pip install torch`` (CPU build is enough).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

from jrnn.core.cells import Cell, LSTMCarry, elman, gate_size, gru, lstm

__all__ = ["from_torch", "to_torch", "carry_from_torch", "carry_to_torch"]


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "jrnn.interop.torch needs PyTorch: pip install torch (the CPU build is enough)"
        ) from e
    return torch


def _kind_of(module) -> str:
    torch = _torch()
    if isinstance(module, torch.nn.LSTM):
        return "lstm"
    if isinstance(module, torch.nn.GRU):
        return "gru"
    if isinstance(module, torch.nn.RNN):
        return "elman"
    raise TypeError(
        f"expected torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU, got {type(module).__name__}"
    )


def from_torch(module, dtype=jnp.float32) -> tuple[list[Cell], list[dict]]:
    r"""Cells and parameters equal to a ``torch.nn.RNN`` / ``LSTM`` / ``GRU``.

    Layer ``l`` of the module becomes ``cells[l]`` with ``params[l]``
    (see the module docstring for the mapping), so for inputs
    ``xs: [T, B, D]`` (PyTorch's default layout)

    .. math::
        \texttt{module}(xs) = \texttt{jrnn.unroll(cells, params, xs)}

    up to floating-point rounding, outputs and final states alike.  For a
    ``bidirectional=True`` module ``cells[l]`` and ``params[l]`` are
    ``(forward, backward)`` pairs and :func:`jrnn.bidirectional` takes the
    place of :func:`jrnn.unroll`; an LSTM's ``proj_size`` becomes
    ``jrnn.lstm(H, proj_size=P)`` with ``W_hr = weight_hr_l{l}.T``.  A module
    built with ``bias=False`` gets zero biases.  ``batch_first`` and
    ``dropout`` are properties of the call, not of the weights: pass
    ``time_major=False`` and ``dropout=`` to :func:`jrnn.unroll` yourself.

    Args:
      module: a ``torch.nn.RNN`` (tanh or relu), ``LSTM`` (any ``proj_size``)
        or ``GRU`` with any ``num_layers``, uni- or bidirectional.
      dtype: dtype of the returned arrays.

    Returns:
      ``(cells, params)``: two lists with one entry per layer (a pair per
      layer when bidirectional), ready for ``jrnn.unroll(cells, params, xs)``
      (``jrnn.bidirectional`` when bidirectional).

    Example (skipped when torch is not installed):
      >>> import pytest; torch = pytest.importorskip("torch")
      >>> import jax.numpy as jnp, numpy as np, jrnn
      >>> from jrnn.interop import torch as jt
      >>> _ = torch.manual_seed(0)
      >>> torch_lstm = torch.nn.LSTM(3, 8, num_layers=2)
      >>> cells, params = jt.from_torch(torch_lstm)
      >>> [c.kind for c in cells], params[1]["W"].shape
      (['lstm', 'lstm'], (8, 32))
      >>> x = torch.randn(5, 2, 3)                     # [T, B, D]
      >>> ys, (h_n, c_n) = torch_lstm(x)
      >>> carries, hs = jrnn.unroll(cells, params, jnp.asarray(x.numpy()))
      >>> bool(np.allclose(hs, ys.detach().numpy(), atol=1e-5))
      True
      >>> bool(np.allclose(carries[1].c, c_n[1].detach().numpy(), atol=1e-5))
      True
    """
    kind = _kind_of(module)
    H = module.hidden_size
    P = getattr(module, "proj_size", 0) or None
    if kind == "lstm":
        make = lambda: lstm(H, proj_size=P)
    elif kind == "gru":
        make = lambda: gru(H)
    else:
        make = lambda: elman(H, module.nonlinearity)

    def get(name):
        return module.get_parameter(name).detach().cpu().numpy().astype(np.float64)

    def layer_params(suffix):
        W_ih, W_hh = get(f"weight_ih_{suffix}"), get(f"weight_hh_{suffix}")
        if module.bias:
            b_ih, b_hh = get(f"bias_ih_{suffix}"), get(f"bias_hh_{suffix}")
        else:
            b_ih = b_hh = np.zeros(W_ih.shape[0])
        p = {"W": W_ih.T, "W_h": W_hh.T}
        if kind == "gru":
            p["b"], p["b_h"] = b_ih, b_hh
        else:
            p["b"] = b_ih + b_hh  # both biases are added to the same pre-activation
        if P is not None:
            p["W_hr"] = get(f"weight_hr_{suffix}").T  # h = (o * tanh c) @ W_hr
        return {k: jnp.asarray(v, dtype) for k, v in p.items()}

    cells, params = [], []
    for layer in range(module.num_layers):
        if module.bidirectional:
            cells.append((make(), make()))
            params.append((layer_params(f"l{layer}"), layer_params(f"l{layer}_reverse")))
        else:
            cells.append(make())
            params.append(layer_params(f"l{layer}"))
    return cells, params


def _torch_class(cell: Cell):
    torch = _torch()
    if cell.kind == "lstm":
        return torch.nn.LSTM, {}
    if cell.kind == "gru":
        return torch.nn.GRU, {}
    if cell.kind == "elman" and cell.activation in ("tanh", "relu"):
        return torch.nn.RNN, {"nonlinearity": cell.activation}
    what = f"{cell.kind!r} cell" + (f" with activation {cell.activation!r}" if cell.kind in ("elman", "linear") else "")
    raise ValueError(
        f"PyTorch has no module for a {what} "
        "(it has Elman tanh/relu, LSTM and GRU)"
    )


def to_torch(
    params: Union[dict, Sequence[dict]],
    cell: Union[Cell, Sequence[Cell]],
    *,
    batch_first: bool = False,
    dtype: Any = None,
):
    r"""A ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` computing what jrnn computes.

    The inverse of :func:`from_torch`: ``weight_ih_l{l} = W.T``,
    ``weight_hh_l{l} = W_h.T``; RNN and LSTM get ``bias_ih = b`` and
    ``bias_hh = 0``, the GRU ``bias_ih = b`` and ``bias_hh = b_h``.  So

    .. math::
        \texttt{to\_torch(params, cells)}(xs) = \texttt{jrnn.unroll(cells, params, xs)}.

    Args:
      params: a cell's params dict, or a list of them for a stack.
      cell: the matching :class:`~jrnn.core.cells.Cell` or list of cells; all
        layers must be the same kind (``elman`` with tanh or relu, ``lstm``
        -- with or without projections -- or ``gru``) and size, as PyTorch's
        modules require.  Lists of ``(forward, backward)`` pairs of cells and
        params (as :func:`jrnn.bidirectional` takes them) give a module with
        ``bidirectional=True``.
      batch_first: the module's ``batch_first``.
      dtype: a ``torch.dtype``; default ``torch.float32``.

    Returns:
      A new module, in training mode, with ``num_layers = len(params)``
      (and ``proj_size = P`` for ``jrnn.lstm(H, proj_size=P)`` cells).

    Example (skipped when torch is not installed):
      >>> import pytest; torch = pytest.importorskip("torch")
      >>> import jax, jax.numpy as jnp, numpy as np, jrnn
      >>> from jrnn.interop import torch as jt
      >>> cells = [jrnn.gru(8), jrnn.gru(8)]
      >>> k0, k1 = jax.random.split(jax.random.PRNGKey(0))
      >>> params = [cells[0].init(k0, 3), cells[1].init(k1, 8)]
      >>> torch_gru = jt.to_torch(params, cells)
      >>> torch_gru
      GRU(3, 8, num_layers=2)
      >>> xs = jnp.ones((5, 2, 3), jnp.float32)
      >>> ys, h_n = torch_gru(torch.tensor(np.asarray(xs)))
      >>> carries, hs = jrnn.unroll(cells, params, xs)
      >>> bool(np.allclose(hs, ys.detach().numpy(), atol=1e-5))
      True
    """
    torch = _torch()
    stacked = not isinstance(cell, Cell)
    cells = list(cell) if stacked else [cell]
    params_list = list(params) if stacked else [params]
    if not cells or len(cells) != len(params_list):
        raise ValueError(f"got {len(cells)} cells but {len(params_list)} params")
    bidir = _is_pair(cells[0])
    if bidir and not (all(map(_is_pair, cells)) and all(map(_is_pair, params_list))):
        raise ValueError("a bidirectional stack needs a (forward, backward) pair of cells and "
                         "of params for every layer")
    flat = [c for pair in cells for c in pair] if bidir else cells
    if not all(isinstance(c, Cell) for c in flat):
        raise TypeError("cell must be a jrnn Cell, a list of Cells or a list of (forward, backward) pairs")
    kinds = {(c.kind, c.activation) for c in flat}
    sizes = {(gate_size(c), c.hidden_size) for c in flat}
    if len(kinds) != 1 or len(sizes) != 1:
        raise ValueError(
            f"a torch module needs one cell kind and one hidden size, got {sorted(map(str, kinds))} / {sorted(sizes)}"
        )
    cls, extra = _torch_class(flat[0])
    H, out = gate_size(flat[0]), flat[0].hidden_size
    P = out if flat[0].cell_size is not None else 0
    if P:
        extra = {**extra, "proj_size": P}
    directions = 2 if bidir else 1
    first = params_list[0][0] if bidir else params_list[0]
    D = int(np.shape(first["W"])[0])
    G = flat[0].num_gates
    for layer, ps in enumerate(params_list):
        for p in (ps if bidir else (ps,)):
            want_in = D if layer == 0 else directions * out
            if np.shape(p["W"]) != (want_in, G * H) or np.shape(p["W_h"]) != (out, G * H):
                raise ValueError(
                    f"layer {layer}: expected W [{want_in}, {G * H}] and W_h [{out}, {G * H}], got "
                    f"{np.shape(p['W'])} and {np.shape(p['W_h'])}"
                )
    dtype = torch.float32 if dtype is None else dtype
    module = cls(D, H, num_layers=len(cells), batch_first=batch_first, dtype=dtype,
                 bidirectional=bidir, **extra)

    def tensor(x):
        return torch.tensor(np.array(x, np.float64), dtype=dtype)

    def put(p, suffix):
        module.get_parameter(f"weight_ih_{suffix}").copy_(tensor(np.asarray(p["W"]).T))
        module.get_parameter(f"weight_hh_{suffix}").copy_(tensor(np.asarray(p["W_h"]).T))
        module.get_parameter(f"bias_ih_{suffix}").copy_(tensor(p["b"]))
        b_hh = p["b_h"] if "b_h" in p else np.zeros_like(np.asarray(p["b"]))
        module.get_parameter(f"bias_hh_{suffix}").copy_(tensor(b_hh))
        if P:
            module.get_parameter(f"weight_hr_{suffix}").copy_(tensor(np.asarray(p["W_hr"]).T))

    with torch.no_grad():
        for layer, ps in enumerate(params_list):
            if bidir:
                put(ps[0], f"l{layer}")
                put(ps[1], f"l{layer}_reverse")
            else:
                put(ps, f"l{layer}")
    return module


def _is_pair(x) -> bool:
    """A ``(forward, backward)`` pair (a Cell, an LSTMCarry or a params dict is not)."""
    return isinstance(x, (tuple, list)) and not isinstance(x, (Cell, LSTMCarry)) and len(x) == 2


def carry_from_torch(state, cells: Sequence[Cell], dtype=jnp.float32) -> list:
    """PyTorch's ``h_0`` / ``(h_0, c_0)`` (``[num_layers, B, H]``) -> jrnn's list of carries.

    With ``cells`` a list of ``(forward, backward)`` pairs (a bidirectional
    module, states ``[2 num_layers, B, H]``) the carries come in pairs too.
    With projections ``h_0`` is ``[..., P]`` and ``c_0`` ``[..., H]``.

    Example (skipped when torch is not installed):
      >>> import pytest; torch = pytest.importorskip("torch")
      >>> import jrnn
      >>> from jrnn.interop import torch as jt
      >>> h0, c0 = torch.zeros(2, 4, 6), torch.ones(2, 4, 6)
      >>> carries = jt.carry_from_torch((h0, c0), [jrnn.lstm(6)] * 2)
      >>> len(carries), carries[0].c.shape, float(carries[1].c[0, 0])
      (2, (4, 6), 1.0)
    """
    def arr(t):
        return jnp.asarray(t.detach().cpu().numpy().astype(np.float64), dtype)

    bidir = bool(cells) and _is_pair(cells[0])
    flat = [c for pair in cells for c in pair] if bidir else list(cells)
    is_lstm = [c.kind == "lstm" for c in flat]
    if any(is_lstm) != all(is_lstm):
        raise ValueError("cells must be all LSTMs or no LSTMs")
    if all(is_lstm):
        h, c = state
        carries = [LSTMCarry(arr(h[l]), arr(c[l])) for l in range(len(flat))]
    else:
        carries = [arr(state[l]) for l in range(len(flat))]
    if bidir:  # rows 2l and 2l + 1 are layer l's forward and backward directions
        return [(carries[2 * l], carries[2 * l + 1]) for l in range(len(cells))]
    return carries


def carry_to_torch(carries: Sequence[Any], dtype: Optional[Any] = None):
    """jrnn's list of carries -> PyTorch's ``h_n`` or ``(h_n, c_n)``, ``[num_layers, B, H]``.

    A list of ``(forward, backward)`` pairs (from :func:`jrnn.bidirectional`)
    is flattened layer-major: ``[2 num_layers, B, H]`` in PyTorch's order.

    Example (skipped when torch is not installed):
      >>> import pytest; torch = pytest.importorskip("torch")
      >>> import jax.numpy as jnp
      >>> from jrnn.interop import torch as jt
      >>> h_n = jt.carry_to_torch([jnp.zeros((4, 6)), jnp.ones((4, 6))])
      >>> h_n.shape, h_n.dtype
      (torch.Size([2, 4, 6]), torch.float32)
    """
    torch = _torch()
    dtype = torch.float32 if dtype is None else dtype

    def stack(arrays):
        return torch.as_tensor(np.stack([np.asarray(a, np.float64) for a in arrays]), dtype=dtype)

    if carries and _is_pair(carries[0]):
        carries = [c for pair in carries for c in pair]
    if all(isinstance(c, LSTMCarry) for c in carries):
        return stack([c.h for c in carries]), stack([c.c for c in carries])
    return stack(carries)
