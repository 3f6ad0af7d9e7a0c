"""One frozen description of a language model: :class:`ModelConfig`.

``jrnn.rnn_lm(V, **fields)`` and ``jrnn.nnlm(V, **fields)`` check their
arguments by making one; :func:`jrnn.models.lm.build_model` builds the model
one describes; the training configuration holds one
(``TrainConfig.model``) and so does every checkpoint.  Every field is checked
when the object is made, once, with one line naming the field.

The names are ``rnn_lm``'s (``num_layers``, ``tie_embeddings``, ``method``,
``scan_unroll``); the command line spells some of them shorter (``--layers``,
``--tie``, ``--unroll``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

from jrnn.core import names
from jrnn.core.cells import CELL_KINDS, Cell
from jrnn.core.gates import ACTIVATIONS
from jrnn.core.select import METHODS, PRECISIONS, RECURRENCE_PRECISIONS
from jrnn.core.validation import ConfigError
from jrnn.core.validation import config_int as _int
from jrnn.core.validation import config_number as _number

__all__ = ["ModelConfig", "ConfigError", "MODEL_KINDS", "applies"]

# What ``ModelConfig.cell`` can name: a recurrent cell kind, or the fixed-window NNLM.
MODEL_KINDS = names.MODEL_KINDS


def _rate(name: str, v) -> float:
    return _number(name, v, low=0.0, low_open=False, high=1.0, high_open=True)


_RNNS = CELL_KINDS
# The kinds with a recurrent weight W_h (what weight_dropout drops); mingru, minlstm,
# rglru and mlstm have none (their gates read only x_t), and slstm's block-diagonal R is
# not a W_h.
_WITH_W_H = ("linear", "elman", "lstm", "gru")
# Why recurrent_dropout (a mask on h_(t-1)) is refused for a kind.
_NO_RECURRENT_DROPOUT = {
    "gru": "the GRU reuses h_(t-1) in its update gate, where a mask would change the state",
    "mlstm": "the mLSTM's gates and memory never read h_(t-1), so the mask would do nothing",
    **{kind: (f"the {kind}'s gates never read h_(t-1) and the state enters its update "
              "linearly, so a mask on h_(t-1) would drop the memory itself")
       for kind in ("mingru", "minlstm", "rglru")},
    "nnlm": "the NNLM has no recurrence",
}
# (field, the kinds it applies to, its default): set elsewhere, it is refused.
_APPLIES = (
    ("activation", ("elman",), None),
    ("forget_bias", ("lstm",), 0.0),
    ("proj_size", ("lstm",), None),
    ("context_size", ("nnlm",), None),
    ("num_layers", _RNNS, None),  # the NNLM has one hidden layer (1 is accepted)
    ("tie_embeddings", _RNNS, False),
    ("method", _RNNS, "auto"),
    ("scan_unroll", _RNNS, None),
    ("remat", _RNNS, False),
    ("variational", _RNNS, False),
    ("weight_dropout", _WITH_W_H, 0.0),
    ("embedding_dropout", _RNNS, 0.0),
    ("recurrence_precision", _RNNS, "float32"),
)


def applies(name: str, kind: str) -> bool:
    """Whether field ``name`` means something for a model of ``kind`` (a kind's name).

    Example:
      >>> applies("forget_bias", "lstm"), applies("forget_bias", "gru"), applies("dropout", "nnlm")
      (True, False, True)
    """
    return all(kind in kinds for field, kinds, _ in _APPLIES if field == name)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A language model: which recurrence, how large, how regularized, how run.

    ``cell`` is a kind (``"lstm"``, ``"gru"``, ``"elman"``, ``"linear"``,
    ``"mingru"``, ``"minlstm"``, ``"rglru"``, ``"slstm"``, ``"mlstm"`` (one
    head; ``jrnn.mlstm(H, num_heads=...)`` as a cell for more), or ``"nnlm"``
    for the fixed-window model), one :class:`jrnn.Cell` or a tuple
    of them (one per layer).  With cells given, their sizes are theirs:
    ``hidden_size``, ``activation`` and ``proj_size`` stay ``None``; with a
    kind, ``None`` means ``hidden_size=200`` (and ``activation="tanh"`` for
    ``"elman"``: a name or any callable).  A field set for a kind it does
    not apply to is refused, never ignored: ``activation`` is the Elman
    cell's, ``forget_bias`` and ``proj_size`` the LSTM's, ``context_size``
    the NNLM's, the recurrence's options (``num_layers`` above 1,
    ``tie_embeddings``, ``method``, ``remat``, ...) the recurrent models'.
    ``num_layers=None`` means 2 (or one layer per cell given).
    ``init_scale=None`` keeps each cell's default init (U(+-1/sqrt(H)), as
    PyTorch) and U(+-0.1) for the embedding and output layer; a number
    ``s`` draws every parameter from U(-s, s), as Zaremba et al. do.
    ``output_precision="auto"`` is resolved when the model is built
    (:func:`jrnn.core.select.output_matmul_dtype`); a built model's
    ``config`` holds the choice, and its ``vocab_size``.

    Hashable, so a safe ``jax.jit`` static argument.

    Example:
      >>> cfg = ModelConfig(hidden_size=8, num_layers=1)
      >>> cfg.cell, cfg.replace(cell="elman").activation, cfg.replace(cell="gru").hidden_size
      ('lstm', 'tanh', 8)
      >>> ModelConfig(cell="gru", forget_bias=1.0)
      Traceback (most recent call last):
      ...
      jrnn.core.validation.ConfigError: forget_bias applies to 'lstm' models, not 'gru' (got 1.0)
      >>> ModelConfig(dropout=1.0)
      Traceback (most recent call last):
      ...
      jrnn.core.validation.ConfigError: dropout must be < 1.0, got 1.0
    """

    cell: Union[str, Cell, tuple] = "lstm"
    activation: Optional[str] = None
    num_layers: Optional[int] = None
    embed_size: int = 200
    hidden_size: Optional[int] = None
    context_size: Optional[int] = None  # the NNLM's window, n - 1 previous words (default 4)
    dropout: float = 0.0
    tie_embeddings: bool = False
    init_scale: Optional[float] = None
    forget_bias: float = 0.0
    method: str = "auto"
    scan_unroll: Optional[int] = None
    remat: bool = False
    custom_vjp: bool = True
    variational: bool = False
    recurrent_dropout: float = 0.0
    weight_dropout: float = 0.0
    embedding_dropout: float = 0.0
    proj_size: Optional[int] = None  # LSTMP: each layer outputs this many features
    output_precision: str = "auto"
    recurrence_precision: str = "float32"  # the recurrence's matmul operands (method="pallas"/"persistent")
    vocab_size: Optional[int] = None  # set by the model built from it

    def __post_init__(self):
        for name in ("dropout", "recurrent_dropout", "weight_dropout", "embedding_dropout"):
            object.__setattr__(self, name, float(_rate(name, getattr(self, name))))
        _int("embed_size", self.embed_size)
        if self.vocab_size is not None:
            _int("vocab_size", self.vocab_size)
        _number("forget_bias", self.forget_bias)
        if self.init_scale is not None:
            _number("init_scale", self.init_scale, low=0.0)
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.scan_unroll is not None:
            _int("scan_unroll", self.scan_unroll)
        if self.output_precision not in PRECISIONS:
            raise ConfigError(f"output_precision must be one of {list(PRECISIONS)}, "
                              f"got {self.output_precision!r}")
        if self.recurrence_precision not in RECURRENCE_PRECISIONS:
            raise ConfigError(f"recurrence_precision must be one of {list(RECURRENCE_PRECISIONS)}, "
                              f"got {self.recurrence_precision!r}")
        if self.recurrence_precision == "bfloat16" and self.method not in ("pallas", "persistent"):
            raise ConfigError("recurrence_precision='bfloat16' is implemented by method='pallas' "
                              f"and 'persistent' only, got method={self.method!r}")
        for name in ("tie_embeddings", "remat", "custom_vjp", "variational"):
            object.__setattr__(self, name, bool(getattr(self, name)))
        if isinstance(self.cell, str):
            self._check_kind()
        else:
            self._check_cells()
        out = self.out_size
        if self.tie_embeddings and out is not None and self.embed_size != out:
            what = "proj_size" if self.proj_size else "hidden_size"
            raise ConfigError(f"tie_embeddings needs embed_size equal to {what}, "
                              f"got {self.embed_size} and {out}")

    def _check_kind(self):
        if self.cell not in MODEL_KINDS:
            raise ConfigError(f"cell must be one of {list(MODEL_KINDS)}, a jrnn.Cell or a tuple "
                              f"of them, got {self.cell!r}")
        self._check_applies()
        if self.cell == "elman":
            activation = "tanh" if self.activation is None else self.activation
            if not callable(activation) and activation not in ACTIVATIONS:
                raise ConfigError(f"activation must be one of {list(ACTIVATIONS)} or a callable, "
                                  f"got {activation!r}")
            object.__setattr__(self, "activation", activation)
        if self.cell == "nnlm":
            object.__setattr__(self, "context_size", _int(
                "context_size", 4 if self.context_size is None else self.context_size))
        object.__setattr__(self, "hidden_size",
                           _int("hidden_size", 200 if self.hidden_size is None else self.hidden_size))
        object.__setattr__(self, "num_layers",
                           _int("num_layers", self.num_layers if self.num_layers is not None
                                else 1 if self.cell == "nnlm" else 2))
        if self.recurrent_dropout and self.cell in _NO_RECURRENT_DROPOUT:
            raise ConfigError(f"recurrent_dropout is for the LSTM, Elman and linear cells, not "
                              f"{self.cell!r}: {_NO_RECURRENT_DROPOUT[self.cell]}")
        if self.proj_size is not None:
            _int("proj_size", self.proj_size)
            if self.cell != "lstm" or self.proj_size >= self.hidden_size:
                raise ConfigError(f"proj_size is for the LSTM and must be smaller than "
                                  f"hidden_size ({self.hidden_size}), got {self.proj_size} "
                                  f"with cell {self.cell!r}")

    def _check_applies(self):
        """Refuse a field set away from its default for a kind it does not apply to."""
        for name, kinds, default in _APPLIES:
            value = getattr(self, name)
            if self.cell not in kinds and value != default and not (
                    name == "num_layers" and value == 1):
                where = ("the recurrent models" if kinds == _RNNS
                         else " and ".join(f"{k!r}" for k in kinds) + " models")
                raise ConfigError(f"{name} applies to {where}, not {self.cell!r} "
                                  f"(got {value!r})")

    def _check_cells(self):
        cells = (self.cell,) if isinstance(self.cell, Cell) else self.cell
        if not isinstance(cells, tuple) or not cells or not all(isinstance(c, Cell) for c in cells):
            raise ConfigError(f"cell must be one of {list(MODEL_KINDS)}, a jrnn.Cell or a tuple "
                              f"of them, got {type(self.cell).__name__}")
        set_here = [name for name in ("hidden_size", "activation", "proj_size")
                    if getattr(self, name) is not None] + (["forget_bias"] if self.forget_bias
                                                          else [])
        if set_here:
            verb = "belongs" if len(set_here) == 1 else "belong"
            raise ConfigError(f"{', '.join(set_here)} {verb} to the cell when cells are given; "
                              f"set them where the cell is made (e.g. jrnn.lstm(H, proj_size=P))")
        if len(cells) > 1 and self.num_layers is not None and self.num_layers != len(cells):
            raise ConfigError(f"num_layers is {self.num_layers} but {len(cells)} cells were given")
        layers = len(cells) if len(cells) > 1 else 2 if self.num_layers is None else self.num_layers
        object.__setattr__(self, "num_layers", _int("num_layers", layers))
        refused = [c.kind for c in cells if c.kind in _NO_RECURRENT_DROPOUT]
        if self.recurrent_dropout and refused:
            raise ConfigError(f"recurrent_dropout is for the LSTM, Elman and linear cells: "
                              f"{_NO_RECURRENT_DROPOUT[refused[0]]}")

    @property
    def cells_given(self) -> bool:
        """Whether ``cell`` holds cells (made in Python) rather than a kind's name."""
        return not isinstance(self.cell, str)

    @property
    def from_python(self) -> bool:
        """Whether it holds cells or an activation made in Python (no file form then)."""
        return self.cells_given or callable(self.activation)

    @property
    def out_size(self) -> Optional[int]:
        """The width of what the last layer outputs (what the output layer reads)."""
        if isinstance(self.cell, Cell):
            return self.cell.hidden_size
        if isinstance(self.cell, tuple):
            return self.cell[-1].hidden_size
        return self.proj_size or self.hidden_size

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with ``changes`` (checked like a new config); unknown names are refused.

        Changing ``cell`` to another kind resets the fields that do not
        apply to the new kind (unless they are changed too), so a preset's
        activation does not follow it to an LSTM; a field changed here that
        does not apply is refused.
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown model option(s): {', '.join(unknown)}")
        new_kind = changes.get("cell", self.cell)
        if isinstance(new_kind, str) and new_kind != self.cell:
            for name, kinds, default in _APPLIES:
                if name not in changes and new_kind not in kinds:
                    changes[name] = None if name == "num_layers" else default
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict (what a checkpoint stores).

        A config holding cells made in Python has no file form: only that
        code can make them again.
        """
        if self.from_python:
            raise ConfigError("a model whose cells or activation were made in Python cannot be "
                              "written to a file; keep the code that makes them")
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "ModelConfig":
        """The config :meth:`to_dict` wrote.

        Fields that do not apply to the file's kind are dropped (files written
        while 0.3 was being made still stored every field, as 0.2 did).
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a model config must be a JSON object, got {type(d).__name__}")
        kind = d.get("cell", "lstm")
        if isinstance(kind, str):
            d = {k: v for k, v in d.items() if applies(k, kind)}
        return cls().replace(**d)
