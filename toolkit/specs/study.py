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

from toolkit.families.seedarch import SeedArch
from toolkit.specs.recipe import Recipe
from toolkit.specs.spec import Reported, Spec

DEFAULT_L2 = 1e-3


def _dnn(name, units, dropout, optimizer, l2, reported, readings=()) -> Spec:
    return Spec(
        name=name,
        family="DNN",
        arch=SeedArch(dense_units=tuple(units), dropout=tuple(dropout), l2=tuple(l2)),
        recipe=Recipe(optimizer=optimizer),
        origin="study",
        readings=tuple(readings),
        reported=Reported(*reported),
    )


def _cnn(name, filters, units, dropout, reported, augment=False, readings=()) -> Spec:
    return Spec(
        name=name,
        family="CNN",
        arch=SeedArch(conv_filters=tuple(filters), dense_units=tuple(units), dropout=tuple(dropout),
                      l2=(0.0,) * len(units)),
        recipe=Recipe(augment=augment),
        origin="study",
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
STUDY_SPECS: tuple[Spec, ...] = (
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
         readings=['units "[1024,54]" read as [1024, 64]']),
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
