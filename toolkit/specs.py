"""The seed study's 17 experiment specs (its Tables 2 and 3) as frozen, validated data.

Readings of the seed's OCR'd text, recorded next to every value they change:
- "54" is 64 and "238" is 256 (the same OCR swaps "GTX 580" into "GTX SSO"); layer widths of
  54 or 238 units appear nowhere else in the study and break its powers-of-two pattern.
- "Drop Out Percentage [0,20]" is per hidden layer: no dropout after the first, 20% after the
  second; a single CNN value applies after the dense layer.
- "Regularization [N/A,L2]" is per hidden layer: L2 on the kernels of the layers marked L2.

Choices made where the seed is silent (also listed in the README):
- epochs: 20, as in the seed's section 5.1.
- DNN batch size: 512, the same as every CNN spec, which keeps a 17-spec sweep affordable.
- validation: a seeded 10% holdout of the 60,000 training images (6,000), never the test set.
- L2 factor: 1e-3 on each layer the seed marks "L2" (the seed names no factor).
- augmentation (the "DA" specs): random horizontal flip, +-10% translation and +-10% zoom,
  applied to training batches only; the exported model never contains these layers.
- loss: sparse categorical cross-entropy on the softmax probabilities the model outputs. The
  seed's losses (~1.6 at 85-91% accuracy) show softmax outputs fed to a loss expecting
  logits; this toolkit does not repeat that.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from toolkit.contract import IMAGE_SHAPE, NUM_CLASSES
from toolkit.errors import UsageError
from toolkit.precision import MODES as PRECISION_MODES

OPTIMIZERS = ("adam", "rmsprop")
FAMILIES = ("DNN", "CNN")
DEFAULT_L2 = 1e-3


@dataclass(frozen=True)
class Reported:
    """The seed's own figures for a spec (Tables 3 and 4 of the study)."""

    test_accuracy: float
    train_accuracy: float
    train_loss: float
    train_seconds: float
    val_accuracy: float
    val_loss: float


@dataclass(frozen=True)
class Spec:
    name: str
    family: str
    dense_units: tuple[int, ...]
    dropout: tuple[float, ...]
    l2: tuple[float, ...]
    optimizer: str = "adam"
    conv_filters: tuple[int, ...] = ()
    kernel_size: tuple[int, int] = (3, 3)
    conv_strides: int = 1
    pool_size: tuple[int, int] = (2, 2)
    pool_strides: int = 2
    batch_size: int = 512
    augment: bool = False
    epochs: int = 20
    validation_fraction: float = 0.1
    # Training arithmetic (toolkit.precision): the run's manifest records the mode it resolved to,
    # so it is not part of summary().
    mixed_precision: str = "off"
    readings: tuple[str, ...] = ()
    reported: Reported | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise UsageError(f"spec {self.name!r} is invalid: {'; '.join(problems)}")

    def _problems(self) -> Iterable[str]:
        if self.family not in FAMILIES:
            yield f"family must be one of {FAMILIES}, got {self.family!r}"
        if self.family == "DNN" and self.conv_filters:
            yield "a DNN spec has no conv_filters"
        if self.family == "CNN" and not self.conv_filters:
            yield "a CNN spec needs at least one conv filter count"
        if not self.dense_units or any(u <= 0 for u in self.dense_units):
            yield f"dense_units must be positive, got {self.dense_units}"
        if any(f <= 0 for f in self.conv_filters):
            yield f"conv_filters must be positive, got {self.conv_filters}"
        if len(self.dropout) != len(self.dense_units):
            yield "dropout needs one rate per dense layer"
        if any(not 0.0 <= d < 1.0 for d in self.dropout):
            yield f"dropout rates must be in [0, 1), got {self.dropout}"
        if len(self.l2) != len(self.dense_units):
            yield "l2 needs one factor per dense layer"
        if any(f < 0 for f in self.l2):
            yield f"l2 factors must be >= 0, got {self.l2}"
        if self.optimizer not in OPTIMIZERS:
            yield f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"
        if self.batch_size <= 0:
            yield f"batch_size must be positive, got {self.batch_size}"
        if self.epochs <= 0:
            yield f"epochs must be positive, got {self.epochs}"
        if not 0.0 < self.validation_fraction < 0.5:
            yield f"validation_fraction must be in (0, 0.5), got {self.validation_fraction}"
        if self.mixed_precision not in PRECISION_MODES:
            yield f"mixed_precision must be one of {PRECISION_MODES}, got {self.mixed_precision!r}"
        side = IMAGE_SHAPE[0]
        for _ in self.conv_filters:
            side = (side - self.kernel_size[0]) // self.conv_strides + 1
            side = (side - self.pool_size[0]) // self.pool_strides + 1
            if side < 1:
                yield "too many conv/pool layers for a 28x28 image"
                break

    def layer_sizes(self) -> list[tuple[str, int, int]]:
        """(kind, inputs, outputs) per weighted layer, derived from the architecture alone."""
        layers: list[tuple[str, int, int]] = []
        side, channels = IMAGE_SHAPE[0], IMAGE_SHAPE[2]
        kernel_area = self.kernel_size[0] * self.kernel_size[1]
        for filters in self.conv_filters:
            side = (side - self.kernel_size[0]) // self.conv_strides + 1
            # For a conv layer "inputs" is the MACs per output position.
            layers.append(("conv", kernel_area * channels, filters * side * side))
            channels = filters
            side = (side - self.pool_size[0]) // self.pool_strides + 1
        width = side * side * channels
        for units in (*self.dense_units, NUM_CLASSES):
            layers.append(("dense", width, units))
            width = units
        return layers

    def param_count(self) -> int:
        total, channels = 0, IMAGE_SHAPE[2]
        kernel_area = self.kernel_size[0] * self.kernel_size[1]
        for filters in self.conv_filters:
            total += kernel_area * channels * filters + filters
            channels = filters
        total += sum(i * o + o for kind, i, o in self.layer_sizes() if kind == "dense")
        return total

    def mflops_per_image(self) -> float:
        """Multiply-adds x 2 of conv and dense layers (pooling and activations are noise)."""
        macs = sum(i * o for _, i, o in self.layer_sizes())
        return 2 * macs / 1e6

    def embedding_size(self) -> int:
        return self.dense_units[-1]

    def summary(self) -> dict[str, Any]:
        """The spec as the run manifest records it. The mixed-precision mode is left out: the manifest
        carries the mode it resolved to (only when not float32, so float32 runs keep their ids)."""
        data = dataclasses.asdict(self)
        for key in ("reported", "readings", "mixed_precision"):
            data.pop(key)
        return data


def _dnn(name, units, dropout, optimizer, l2, reported, readings=()) -> Spec:
    return Spec(
        name=name,
        family="DNN",
        dense_units=tuple(units),
        dropout=tuple(dropout),
        l2=tuple(l2),
        optimizer=optimizer,
        readings=tuple(readings),
        reported=Reported(*reported),
    )


def _cnn(name, filters, units, dropout, reported, augment=False, readings=()) -> Spec:
    return Spec(
        name=name,
        family="CNN",
        conv_filters=tuple(filters),
        dense_units=tuple(units),
        dropout=tuple(dropout),
        l2=(0.0,) * len(units),
        augment=augment,
        readings=tuple(readings),
        reported=Reported(*reported),
    )


_R54 = 'units "[54]" read as [64] (OCR 6->5)'
_R54_128 = 'units "[54, 128]" read as [64, 128]'
_R128_238 = 'units "[128,238]" read as [128, 256] (OCR 5->3)'
_R3L = 'units "[54,128,54]" read as [64, 128, 64]'
_R3L_238 = 'units "[54,128,238]" read as [64, 128, 256]'
_DROP = 'dropout "[0,20]" read as none after layer 1, 20% after layer 2'
_L2 = f'regularization "[N/A,L2]" read as L2({DEFAULT_L2}) on layer 2 (factor not in seed)'

# (test_acc, train_acc, train_loss, train_seconds, val_acc, val_loss) from the seed's tables.
_SPECS: tuple[Spec, ...] = (
    _dnn("DNN_1L_No_Dropout_Exp1", [64], [0.0], "adam", [0.0],
         (0.83850, 0.87190, 1.59185, 69.29, 0.86063, 1.60177), [_R54]),
    _dnn("DNN_2L_No_Dropout_Exp1", [64, 128], [0.0, 0.0], "adam", [0.0, 0.0],
         (0.80270, 0.80342, 1.65788, 74.96, 0.79860, 1.66212), [_R54_128]),
    _dnn("DNN_2L_Dropout_Exp2", [128, 256], [0.0, 0.2], "adam", [0.0, 0.0],
         (0.85280, 0.85107, 1.60990, 76.80, 0.85274, 1.60798), [_R128_238, _DROP]),
    _dnn("DNN_2L_No_Dropout_Exp3", [64, 128], [0.0, 0.0], "rmsprop", [0.0, 0.0],
         (0.85630, 0.85516, 1.60613, 82.41, 0.84983, 1.61116), [_R54_128]),
    _dnn("DNN_2L_Dropout_Exp4", [128, 256], [0.0, 0.2], "rmsprop", [0.0, 0.0],
         (0.84340, 0.84358, 1.61738, 88.39, 0.84110, 1.61977), [_R128_238, _DROP]),
    _dnn("DNN_2L_Dropout_Exp5", [128, 256], [0.0, 0.2], "adam", [0.0, DEFAULT_L2],
         (0.86720, 0.86740, 1.60781, 80.29, 0.85918, 1.61384), [_R128_238, _DROP, _L2]),
    _dnn("DNN_3L_No_Dropout_Exp1", [64, 128, 64], [0.0, 0.0, 0.0], "adam", [0.0, 0.0, 0.0],
         (0.85350, 0.85162, 1.60941, 79.78, 0.84869, 1.61203), [_R3L]),
    _dnn("DNN_3L_Dropout_Exp2", [64, 128, 256], [0.0, 0.0, 0.2], "adam", [0.0, 0.0, 0.0],
         (0.84040, 0.83616, 1.62481, 81.13, 0.83272, 1.62804),
         [_R3L_238, 'dropout "[0,0,20]" read as 20% after layer 3 only']),
    _dnn("DNN_3L_Dropout_Exp3", [64, 128, 256], [0.0, 0.0, 0.2], "rmsprop",
         [0.0, DEFAULT_L2, DEFAULT_L2],
         (0.85690, 0.86204, 1.61459, 99.82, 0.85301, 1.62085),
         [_R3L_238, 'dropout "[0,0,20]" read as 20% after layer 3 only',
          f'regularization "[N/A,L2,L2]" read as L2({DEFAULT_L2}) on layers 2 and 3']),
    _cnn("CNN_2L_No_Dropout_Exp1", [32, 64], [1024], [0.0],
         (0.8977, 0.8799, 1.5839, 22.98, 0.8783, 1.5841)),
    _cnn("CNN_2L_Dropout_Exp2", [32, 64], [1024], [0.2],
         (0.9022, 0.8744, 1.5890, 21.18, 0.8806, 1.5818)),
    _cnn("CNN_2L_No_Dropout_Exp3", [32, 64], [1024, 64], [0.0, 0.0],
         (0.9094, 0.8633, 1.5993, 40.09, 0.8624, 1.5992),
         ['units "[1024,54]" read as [1024, 64]']),
    _cnn("CNN_3L_No_Dropout_Exp4", [32, 64, 128], [1024], [0.0],
         (0.8687, 0.8333, 1.6302, 21.88, 0.8349, 1.6268)),
    _cnn("CNN_3L_Dropout_Exp5", [32, 64, 128], [1024], [0.5],
         (0.8545, 0.7970, 1.6652, 21.84, 0.8178, 1.6433)),
    _cnn("CNN_1L_Dropout_Exp6", [64], [1024], [0.5],
         (0.9137, 0.9012, 1.5621, 39.71, 0.8981, 1.5644)),
    _cnn("CNN_1L_Dropout_DA_Exp7", [64], [128], [0.1],
         (0.8981, 0.8815, 1.5847, 187.70, 0.8814, 1.5835), augment=True),
    _cnn("CNN_2L_Dropout_DA_Exp8", [32, 64], [1024], [0.2],
         (0.8946, 0.8577, 1.6057, 190.08, 0.8670, 1.5952), augment=True),
)

SPECS: dict[str, Spec] = {spec.name: spec for spec in _SPECS}
DEFAULT_SPEC = "CNN_1L_Dropout_Exp6"


def get_spec(name: str) -> Spec:
    """Look a spec up by its exact seed name; an unknown name lists the closest ones."""
    try:
        return SPECS[name]
    except KeyError:
        close = difflib.get_close_matches(name, SPECS, n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "run `toolkit list` to see all 17"
        raise UsageError(f"unknown experiment spec {name!r}; {hint}") from None


def match_specs(patterns: Iterable[str] | None) -> list[Spec]:
    """Specs whose names match any glob pattern (exact names too), in registry order."""
    patterns = list(patterns or [])
    if not patterns:
        return list(SPECS.values())
    chosen: list[Spec] = []
    for pattern in patterns:
        if not any(ch in pattern for ch in "*?["):
            spec = get_spec(pattern)
            if spec not in chosen:
                chosen.append(spec)
            continue
        hits = [s for s in SPECS.values() if fnmatch.fnmatchcase(s.name, pattern)]
        if not hits:
            raise UsageError(f"pattern {pattern!r} matches no spec; run `toolkit list` for names")
        chosen.extend(s for s in hits if s not in chosen)
    return chosen


def with_overrides(spec: Spec, **overrides: Any) -> Spec:
    """A copy of `spec` with some fields replaced; None means "keep the spec's value"."""
    names = {f.name for f in dataclasses.fields(Spec)} - {"name", "reported", "readings"}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UsageError(f"unknown spec field(s) {unknown}; valid: {', '.join(sorted(names))}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(spec, **changes) if changes else spec
