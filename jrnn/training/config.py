"""One frozen description of a training run: :class:`TrainConfig`, and the presets as instances.

The command line, :func:`jrnn.training.fit.fit` and the checkpoint all use
this one object: the CLI builds it from a preset and its options
(:meth:`TrainConfig.replace`), ``fit`` trains it, and the checkpoint stores it
(:meth:`TrainConfig.to_dict`) so that ``--resume`` restores exactly the run
that was started.  Every field is checked when the object is made, so a bad
value (``lr=nan``, ``dropout=1.5``, ``clip=-1``) is refused before anything
runs, with one line naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Union

from jrnn.core.cells import CELL_KINDS
from jrnn.core.gates import ACTIVATIONS as _ACTIVATIONS
from jrnn.core.select import PRECISIONS
from jrnn.core.validation import positive_int
from jrnn.training.loop import OPTIMIZERS as _OPTIMIZERS

__all__ = ["TrainConfig", "ConfigError", "PRESETS", "DEFAULT"]

# What a name in a configuration can mean, read from the one place each list is kept.
CELLS = CELL_KINDS + ("nnlm",)
ACTIVATIONS = tuple(_ACTIVATIONS)
OPTIMIZERS = tuple(_OPTIMIZERS)


class ConfigError(ValueError):
    """A training option out of range; the message names the field."""


def _positive_int(name, v):
    try:
        positive_int(name, v)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _finite(name, v, *, low=None, low_open=True, high=None, high_open=False, what=""):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number{what}, got {v!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low}{what}, got {v!r}")
    if high is not None and (v >= high if high_open else v > high):
        raise ConfigError(f"{name} must be {'<' if high_open else '<='} {high}{what}, got {v!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A language-model training run: model, optimizer, schedule and batching.

    ``clip = 0`` turns gradient clipping off; ``init_scale = None`` keeps each
    layer's default initialization; ``unroll`` is ``"auto"`` or a ``lax.scan``
    unroll factor.  The learning rate follows Zaremba et al.'s schedule:
    ``lr`` for ``decay_start`` epochs, then times ``lr_decay`` each epoch.

    Example:
      >>> cfg = PRESETS["zaremba-small"].replace(epochs=2)
      >>> cfg.hidden_size, cfg.epochs
      (200, 2)
      >>> cfg.replace(lr=float("nan"))
      Traceback (most recent call last):
      ...
      jrnn.training.config.ConfigError: lr must be a finite number, got nan
    """

    cell: str = "lstm"
    activation: str = "tanh"
    layers: int = 1
    embed_size: int = 64
    hidden_size: int = 64
    context_size: int = 4
    dropout: float = 0.0
    tie: bool = False
    init_scale: Optional[float] = None
    forget_bias: float = 0.0
    optimizer: str = "adam"
    lr: float = 0.01
    lr_decay: float = 1.0
    decay_start: int = 1
    clip: float = 5.0
    epochs: int = 3
    batch_size: int = 32
    bptt: int = 20
    seed: int = 0
    unroll: Union[str, int] = "auto"
    remat: bool = False
    variational: bool = False
    recurrent_dropout: float = 0.0
    weight_dropout: float = 0.0
    embedding_dropout: float = 0.0
    proj_size: Optional[int] = None
    output_precision: str = "auto"

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ConfigError(f"cell must be one of {list(CELLS)}, got {self.cell!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("layers", "embed_size", "hidden_size", "context_size", "decay_start",
                     "epochs", "batch_size", "bptt"):
            _positive_int(name, getattr(self, name))
        for name in ("dropout", "recurrent_dropout", "weight_dropout", "embedding_dropout"):
            _finite(name, getattr(self, name), low=0.0, low_open=False, high=1.0, high_open=True)
        if self.recurrent_dropout and self.cell in ("gru", "nnlm"):
            raise ConfigError(f"recurrent_dropout is for the LSTM, Elman and linear cells, "
                              f"not {self.cell!r}")
        _finite("lr", self.lr, low=0.0)
        _finite("lr_decay", self.lr_decay, low=0.0, high=1.0)
        _finite("clip", self.clip, low=0.0, low_open=False, what=" (0 turns clipping off)")
        _finite("forget_bias", self.forget_bias)
        if self.init_scale is not None:
            _finite("init_scale", self.init_scale, low=0.0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.unroll != "auto":
            _positive_int("unroll", self.unroll)
        if self.output_precision not in PRECISIONS:
            raise ConfigError(f"output_precision must be one of {list(PRECISIONS)}, "
                              f"got {self.output_precision!r}")
        if self.proj_size is not None:
            _positive_int("proj_size", self.proj_size)
            if self.cell != "lstm" or self.proj_size >= self.hidden_size:
                raise ConfigError(f"proj_size is for the LSTM and must be smaller than "
                                  f"hidden_size ({self.hidden_size}), got {self.proj_size} "
                                  f"with cell {self.cell!r}")
        out = self.proj_size or self.hidden_size
        if self.tie and self.embed_size != out:
            what = "proj_size" if self.proj_size else "hidden_size"
            raise ConfigError(f"tie needs embed_size equal to {what}, "
                              f"got {self.embed_size} and {out}")

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` (checked like a new config); unknown names are refused."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict (what a checkpoint stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "TrainConfig":
        """The config a checkpoint stored (also the first release's ``settings`` dict)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a training config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls().replace(**{k: v for k, v in d.items() if k in names})

    def changed(self, other: "TrainConfig") -> list[str]:
        """Names of the fields where ``other`` differs from this config."""
        return [f.name for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(other, f.name)]


# What `jrnn train` does with no options: the built-in corpus, a small LSTM.
DEFAULT = TrainConfig()

PRESETS: dict[str, TrainConfig] = {
    # Zaremba, Sutskever & Vinyals (2014), "Recurrent Neural Network Regularization",
    # as in their released code: uniform init, SGD lr 1 then decay, loss summed over
    # time and averaged over the batch, batch 20, 35 BPTT steps.
    "zaremba-small": DEFAULT.replace(
        cell="lstm", layers=2, embed_size=200, hidden_size=200, dropout=0.0, init_scale=0.1,
        optimizer="sgd", lr=1.0, lr_decay=0.5, decay_start=4, clip=5.0, epochs=13, batch_size=20,
        bptt=35),
    "zaremba-medium": DEFAULT.replace(
        cell="lstm", layers=2, embed_size=650, hidden_size=650, dropout=0.5, init_scale=0.05,
        optimizer="sgd", lr=1.0, lr_decay=0.8, decay_start=6, clip=5.0, epochs=39, batch_size=20,
        bptt=35),
    "zaremba-large": DEFAULT.replace(
        cell="lstm", layers=2, embed_size=1500, hidden_size=1500, dropout=0.65, init_scale=0.04,
        optimizer="sgd", lr=1.0, lr_decay=1 / 1.15, decay_start=14, clip=10.0, epochs=55,
        batch_size=20, bptt=35),
    # zaremba-small's 2x200 LSTM with variational dropout (Gal & Ghahramani 2016: one
    # mask per sequence on the embeddings and on each layer's output) and a later lr decay.
    "small-variational": DEFAULT.replace(
        cell="lstm", layers=2, embed_size=200, hidden_size=200, dropout=0.2, variational=True,
        init_scale=0.1, optimizer="sgd", lr=1.0, lr_decay=0.5, decay_start=5, clip=5.0,
        epochs=14, batch_size=20, bptt=35),
    # A vanilla tanh RNN LM in the spirit of Mikolov's RNNLM, for the comparison.
    # Dropout on the non-recurrent connections (Zaremba-style) and tied embeddings.
    "elman-ptb": DEFAULT.replace(
        cell="elman", activation="tanh", layers=1, embed_size=300, hidden_size=300, tie=True,
        dropout=0.3, init_scale=0.05, optimizer="adam", lr=2e-3, lr_decay=0.5, decay_start=4,
        clip=5.0, epochs=8, batch_size=20, bptt=35),
    # The fixed-window feed-forward NNLM baseline (context of 4 words = a 5-gram model).
    "nnlm-ptb": DEFAULT.replace(
        cell="nnlm", context_size=4, layers=1, embed_size=100, hidden_size=300, dropout=0.3,
        init_scale=0.05, optimizer="adam", lr=1e-3, lr_decay=0.5, decay_start=3, clip=5.0,
        epochs=5, batch_size=20, bptt=35),
}
