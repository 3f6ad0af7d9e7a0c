"""One frozen description of a training run: :class:`TrainConfig`, and the presets as instances.

The command line, :func:`jrnn.training.fit.fit` and the checkpoint all use
this one object: the CLI builds it from a preset and its options
(:meth:`TrainConfig.replace`), ``fit`` trains it, and the checkpoint stores it
(:meth:`TrainConfig.to_dict`) so that ``--resume`` restores exactly the run
that was started.  The model is described once, by the
:class:`~jrnn.models.config.ModelConfig` it holds (``config.model``, checked
there); the fields here are the optimizer's and the loop's, checked here.
Every field is checked when the object is made, so a bad value (``lr=nan``,
``dropout=1.5``, ``clip=-1``) is refused before anything runs, with one line
naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from jrnn.core import names
from jrnn.core.gates import ACTIVATIONS as _ACTIVATIONS
from jrnn.core.validation import ConfigError
from jrnn.core.validation import config_int as _positive_int
from jrnn.core.validation import config_number as _finite
from jrnn.models.config import MODEL_KINDS, ModelConfig, applies
from jrnn.training.loop import OPTIMIZERS as _OPTIMIZERS

__all__ = ["TrainConfig", "ModelConfig", "ConfigError", "PRESETS", "DEFAULT"]

# What a name in a configuration can mean, read from the one place each list is kept.
CELLS = MODEL_KINDS
ACTIVATIONS = tuple(_ACTIVATIONS)
OPTIMIZERS = tuple(_OPTIMIZERS)
# The largest seed jax.random.PRNGKey takes on every backend (a uint32).
MAX_SEED = 2**32 - 1
_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size")

# The first release's and 0.2's flat names of model fields, read from old checkpoints only.
_OLD_NAMES = names.OPTION_ALIASES


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A language-model training run: the model, the optimizer, its schedule and the batching.

    ``model`` describes the model (``None``: the model is given to ``fit`` in
    Python).  ``clip = 0`` turns gradient clipping off.  The learning rate
    follows Zaremba et al.'s schedule: ``lr`` for ``decay_start`` epochs,
    then times ``lr_decay`` each epoch (with an optimizer given to ``fit``,
    ``optimizer``, ``lr``, ``lr_decay`` and ``decay_start`` are not used).
    :meth:`replace` takes the model's field names too, so a preset is
    changed in one call.

    Example:
      >>> cfg = PRESETS["zaremba-small"].replace(epochs=2, hidden_size=100)
      >>> cfg.model.hidden_size, cfg.epochs, cfg.model.num_layers
      (100, 2, 2)
      >>> cfg.replace(lr=float("nan"))
      Traceback (most recent call last):
      ...
      jrnn.core.validation.ConfigError: lr must be a finite number, got nan
    """

    model: Optional[ModelConfig] = None
    optimizer: str = "adam"
    lr: float = 0.01
    lr_decay: float = 1.0
    decay_start: int = 1
    clip: float = 5.0
    epochs: int = 3
    batch_size: int = 32
    bptt: int = 20
    seed: int = 0

    def __post_init__(self):
        if self.model is not None and not isinstance(self.model, ModelConfig):
            raise ConfigError(f"model must be a ModelConfig or None, got {type(self.model).__name__}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("decay_start", "epochs", "batch_size", "bptt"):
            _positive_int(name, getattr(self, name))
        _finite("lr", self.lr, low=0.0)
        _finite("lr_decay", self.lr_decay, low=0.0, high=1.0)
        _finite("clip", self.clip, low=0.0, low_open=False, what=" (0 turns clipping off)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) \
                or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be an int in 0..{MAX_SEED}, got {self.seed!r}")

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` (checked like a new config); unknown names are refused.

        Names of :class:`ModelConfig` fields change ``model`` (a
        ``ModelConfig()`` if there is none yet).
        """
        own = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - own - set(_MODEL_FIELDS))
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(unknown)}")
        model_changes = {k: v for k, v in changes.items() if k not in own}
        changes = {k: v for k, v in changes.items() if k in own}
        if model_changes:
            base = changes.get("model", self.model) or ModelConfig()
            changes["model"] = base.replace(**model_changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict (what a checkpoint stores): ``model`` nested."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model"] = None if self.model is None else self.model.to_dict()
        return d

    def flat(self) -> dict:
        """Every field by its one name, the model's included (``None`` where there is no model)."""
        d = {name: getattr(self.model, name, None) for name in _MODEL_FIELDS}
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "model"})
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "TrainConfig":
        """The config a checkpoint stored (also 0.2's flat dict and the first release's
        ``settings``)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a training config must be a JSON object, got {type(d).__name__}")
        own = {f.name for f in dataclasses.fields(cls)}
        if "model" in d:  # 0.3 and later
            model = d["model"]
            return cls(**{k: v for k, v in d.items() if k in own and k != "model"},
                       model=None if model is None else ModelConfig.from_dict(model))
        return cls(model=ModelConfig()).replace(**_from_flat(d, own))

    def changed(self, other: "TrainConfig") -> list[str]:
        """Names of the fields where ``other`` differs from this config."""
        mine, theirs = self.flat(), other.flat()
        return [name for name in mine if mine[name] != theirs[name]]


def _from_flat(d: dict, own: set) -> dict:
    """0.2's flat training config as ``replace`` arguments: old names renamed, and the fields
    that did not apply to its cell dropped (0.2 stored every field and ignored those)."""
    kind = d.get("cell", "lstm")
    out = {}
    for k, v in d.items():
        k = _OLD_NAMES.get(k, k)
        if k == "unroll":  # "auto" or a lax.scan unroll factor
            if kind != "nnlm":
                out.update(method="auto") if v == "auto" else out.update(method="scan",
                                                                         scan_unroll=v)
        elif k in own or (k in _MODEL_FIELDS and applies(k, kind)):
            out[k] = v
    if kind == "nnlm" and out.get("init_scale") is None:
        out["init_scale"] = 0.1  # 0.2 built its NNLM with init_scale or 0.1
    return out


# What `jrnn train` does with no options: the built-in corpus, a small LSTM.
DEFAULT = TrainConfig(model=ModelConfig(cell="lstm", num_layers=1, embed_size=64, hidden_size=64))

PRESETS: dict[str, TrainConfig] = {
    # Zaremba, Sutskever & Vinyals (2014), "Recurrent Neural Network Regularization",
    # as in their released code: uniform init, SGD lr 1 then decay, loss summed over
    # time and averaged over the batch, batch 20, 35 BPTT steps.
    "zaremba-small": DEFAULT.replace(
        cell="lstm", num_layers=2, embed_size=200, hidden_size=200, dropout=0.0, init_scale=0.1,
        optimizer="sgd", lr=1.0, lr_decay=0.5, decay_start=4, clip=5.0, epochs=13, batch_size=20,
        bptt=35),
    "zaremba-medium": DEFAULT.replace(
        cell="lstm", num_layers=2, embed_size=650, hidden_size=650, dropout=0.5, init_scale=0.05,
        optimizer="sgd", lr=1.0, lr_decay=0.8, decay_start=6, clip=5.0, epochs=39, batch_size=20,
        bptt=35),
    "zaremba-large": DEFAULT.replace(
        cell="lstm", num_layers=2, embed_size=1500, hidden_size=1500, dropout=0.65, init_scale=0.04,
        optimizer="sgd", lr=1.0, lr_decay=1 / 1.15, decay_start=14, clip=10.0, epochs=55,
        batch_size=20, bptt=35),
    # zaremba-small's 2x200 LSTM with variational dropout (Gal & Ghahramani 2016: one
    # mask per sequence on the embeddings and on each layer's output) and a later lr decay.
    "small-variational": DEFAULT.replace(
        cell="lstm", num_layers=2, embed_size=200, hidden_size=200, dropout=0.2, variational=True,
        init_scale=0.1, optimizer="sgd", lr=1.0, lr_decay=0.5, decay_start=5, clip=5.0,
        epochs=14, batch_size=20, bptt=35),
    # A vanilla tanh RNN LM in the spirit of Mikolov's RNNLM, for the comparison.
    # Dropout on the non-recurrent connections (Zaremba-style) and tied embeddings.
    "elman-ptb": DEFAULT.replace(
        cell="elman", activation="tanh", num_layers=1, embed_size=300, hidden_size=300,
        tie_embeddings=True, dropout=0.3, init_scale=0.05, optimizer="adam", lr=2e-3,
        lr_decay=0.5, decay_start=4, clip=5.0, epochs=8, batch_size=20, bptt=35),
    # The fixed-window feed-forward NNLM baseline (context of 4 words = a 5-gram model).
    "nnlm-ptb": DEFAULT.replace(
        cell="nnlm", context_size=4, num_layers=1, embed_size=100, hidden_size=300, dropout=0.3,
        init_scale=0.05, optimizer="adam", lr=1e-3, lr_decay=0.5, decay_start=3, clip=5.0,
        epochs=5, batch_size=20, bptt=35),
    # The recurrences of issue 26 at zaremba-small's budget (4.65M parameters with the
    # embedding and output layer): the same E200/H200 layers, no dropout, batch 20, 35 steps;
    # layers added where a cell's layer is smaller than the LSTM's (minGRU 6: 4.49M, minLSTM
    # 5: 4.61M, sLSTM 2: 4.65M).  Adam, not SGD at lr 1: in 300-window probes SGD diverged
    # for the 6-layer minGRU (perplexity 1e30) and trailed Adam for the sLSTM (690 against
    # 498) and the mLSTM (772 against 749).  The RG-LRU and the mLSTM keep 2 layers (4.25M,
    # 4.33M): 5 RG-LRU layers diverged at lr 2e-3 and 1e-3 (each layer can amplify a slowly
    # varying input by up to sqrt((1 + a)/(1 - a)), 44x at a = 0.999, and this plain stack has
    # no normalization between layers, as Griffin's blocks do), 4 mLSTM layers learned more
    # slowly than 2 (749 against 600 after 300 windows).  Probes and results: docs/guide.md,
    # section 7, and benchmarks/RESULTS.md.
    **{f"{cell}-ptb": DEFAULT.replace(
        cell=cell, num_layers=layers, embed_size=200, hidden_size=200, dropout=0.0,
        init_scale=0.1, optimizer="adam", lr=2e-3, lr_decay=0.5, decay_start=2, clip=5.0,
        epochs=6, batch_size=20, bptt=35)
       for cell, layers in (("mingru", 6), ("minlstm", 5), ("rglru", 2), ("slstm", 2),
                            ("mlstm", 2))},
}
names.agree("PRESETS", PRESETS)
