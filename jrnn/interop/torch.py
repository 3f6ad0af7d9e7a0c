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

``torch`` is imported inside the functions that need it, never when jrnn is
imported; install it with ``pip install torch`` (CPU build is enough).
Unidirectional modules only (``bidirectional=False``, ``proj_size=0``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

from jrnn.core.cells import Cell, LSTMCarry, elman, gru, lstm

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

    up to floating-point rounding, outputs and final states alike.  A module
    built with ``bias=False`` gets zero biases.  ``batch_first`` and
    ``dropout`` are properties of the call, not of the weights: pass
    ``time_major=False`` and ``dropout=`` to :func:`jrnn.unroll` yourself.

    Args:
      module: a unidirectional ``torch.nn.RNN`` (tanh or relu), ``LSTM`` or
        ``GRU`` with any ``num_layers``.
      dtype: dtype of the returned arrays.

    Returns:
      ``(cells, params)``: two lists with one entry per layer, ready for
      ``jrnn.unroll(cells, params, xs)``.

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
    if getattr(module, "bidirectional", False):
        raise ValueError("bidirectional torch modules are not supported; convert each direction")
    if getattr(module, "proj_size", 0):
        raise ValueError("LSTM with proj_size > 0 has no jrnn equivalent")
    H = module.hidden_size
    if kind == "lstm":
        make = lambda: lstm(H)
    elif kind == "gru":
        make = lambda: gru(H)
    else:
        make = lambda: elman(H, module.nonlinearity)

    def get(name):
        return module.get_parameter(name).detach().cpu().numpy().astype(np.float64)

    cells, params = [], []
    for layer in range(module.num_layers):
        W_ih, W_hh = get(f"weight_ih_l{layer}"), get(f"weight_hh_l{layer}")
        if module.bias:
            b_ih, b_hh = get(f"bias_ih_l{layer}"), get(f"bias_hh_l{layer}")
        else:
            b_ih = b_hh = np.zeros(W_ih.shape[0])
        p = {"W": W_ih.T, "W_h": W_hh.T}
        if kind == "gru":
            p["b"], p["b_h"] = b_ih, b_hh
        else:
            p["b"] = b_ih + b_hh  # both biases are added to the same pre-activation
        params.append({k: jnp.asarray(v, dtype) for k, v in p.items()})
        cells.append(make())
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
        or ``gru``) and hidden size, as PyTorch's modules require.
      batch_first: the module's ``batch_first``.
      dtype: a ``torch.dtype``; default ``torch.float32``.

    Returns:
      A new module, in training mode, with ``num_layers = len(params)``.

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
    kinds = {(c.kind, c.activation) for c in cells}
    sizes = {c.hidden_size for c in cells}
    if len(kinds) != 1 or len(sizes) != 1:
        raise ValueError(
            f"a torch module needs one cell kind and one hidden size, got {sorted(map(str, kinds))} / {sorted(sizes)}"
        )
    cls, extra = _torch_class(cells[0])
    H = cells[0].hidden_size
    D = int(np.shape(params_list[0]["W"])[0])
    for layer, p in enumerate(params_list):
        want_in = D if layer == 0 else H
        G = cells[0].num_gates
        if np.shape(p["W"]) != (want_in, G * H) or np.shape(p["W_h"]) != (H, G * H):
            raise ValueError(
                f"layer {layer}: expected W [{want_in}, {G * H}] and W_h [{H}, {G * H}], got "
                f"{np.shape(p['W'])} and {np.shape(p['W_h'])}"
            )
    dtype = torch.float32 if dtype is None else dtype
    module = cls(D, H, num_layers=len(cells), batch_first=batch_first, dtype=dtype, **extra)

    def tensor(x):
        return torch.tensor(np.array(x, np.float64), dtype=dtype)

    with torch.no_grad():
        for layer, p in enumerate(params_list):
            module.get_parameter(f"weight_ih_l{layer}").copy_(tensor(np.asarray(p["W"]).T))
            module.get_parameter(f"weight_hh_l{layer}").copy_(tensor(np.asarray(p["W_h"]).T))
            module.get_parameter(f"bias_ih_l{layer}").copy_(tensor(p["b"]))
            b_hh = p["b_h"] if "b_h" in p else np.zeros_like(np.asarray(p["b"]))
            module.get_parameter(f"bias_hh_l{layer}").copy_(tensor(b_hh))
    return module


def carry_from_torch(state, cells: Sequence[Cell], dtype=jnp.float32) -> list:
    """PyTorch's ``h_0`` / ``(h_0, c_0)`` (``[num_layers, B, H]``) -> jrnn's list of carries.

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

    is_lstm = [c.kind == "lstm" for c in cells]
    if any(is_lstm) != all(is_lstm):
        raise ValueError("cells must be all LSTMs or no LSTMs")
    if all(is_lstm):
        h, c = state
        return [LSTMCarry(arr(h[l]), arr(c[l])) for l in range(len(cells))]
    return [arr(state[l]) for l in range(len(cells))]


def carry_to_torch(carries: Sequence[Any], dtype: Optional[Any] = None):
    """jrnn's list of carries -> PyTorch's ``h_n`` or ``(h_n, c_n)``, ``[num_layers, B, H]``.

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

    if all(isinstance(c, LSTMCarry) for c in carries):
        return stack([c.h for c in carries]), stack([c.c for c in carries])
    return stack(carries)
