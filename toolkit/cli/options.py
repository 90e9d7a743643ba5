"""The command line's options, each declared once and shared by every command that takes it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ExpOption = Annotated[str, typer.Option("--exp", help="Experiment spec name (see `toolkit list`).")]
ExpsOption = Annotated[
    list[str] | None,
    typer.Option("--exp", help="Spec name or glob; repeat for several. Default: all trained."),
]
# Resolved once, at the CLI boundary (toolkit.cli.app), into the folder every layer below uses.
ArtifactsOption = Annotated[
    Path | None,
    typer.Option("--artifacts", help="Artifacts root (env TOOLKIT_ARTIFACTS; default ./artifacts)."),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder with the four IDX files (env TOOLKIT_DATA_DIR)."),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for split, init and shuffling.")]
EpochsOption = Annotated[
    int | None, typer.Option("--epochs", help="Override the spec's epochs (20).", min=1)
]
LimitOption = Annotated[
    int | None,
    typer.Option("--limit-train", help="Train on a seeded subset of N images (quick runs).", min=10),
]
MixedPrecisionOption = Annotated[
    str | None,
    typer.Option("--mixed-precision", metavar="bf16|fp16|off|auto",
                 help="Training arithmetic: bf16 or fp16 compute with float32 variables, off (float32, "
                      "the exact recipe) or auto (the fastest this machine has). Default: the spec's "
                      "recipe."),
]
TeacherOption = Annotated[
    str | None,
    typer.Option("--teacher", help="Distil from this trained spec's probabilities (overrides the recipe's)."),
]
RecipeOption = Annotated[
    list[str] | None,
    typer.Option("--recipe", help="Change a recipe field for this run, FIELD=VALUE (repeatable), "
                                  "e.g. --recipe optimizer=sgd --recipe learning_rate=0.1 (fields: "
                                  "toolkit/specs/recipe.py)."),
]
ExportFormatOption = Annotated[
    list[str] | None,
    typer.Option("--format", help="onnx, tflite, openvino (int8 IR), c (the C source for TFLite Micro "
                                  "firmware) or all (repeat or comma-separate). Default: all."),
]
PrecisionOption = Annotated[
    list[str] | None,
    typer.Option("--precision", help="fp32, fp16, int8, dynamic, int8io (TFLite only: int8 input and "
                                     "output, for microcontrollers) or all. Default: fp32."),
]
BenchFormatOption = Annotated[
    list[str] | None,
    typer.Option("--format", help="keras, onnx, tflite, openvino, a key (onnx-int8) or a glob; repeat. "
                                  "Default: all."),
]
MaxBatchOption = Annotated[
    int, typer.Option("--max-batch", min=1, help="Most images per runtime call (1: no batching).")
]
MaxWaitOption = Annotated[
    float,
    typer.Option(
        "--max-wait-ms", min=0.0, help="How long an idle worker waits for a batch to fill before running it."
    ),
]

# Microcontroller budgets (toolkit.core.boards): `toolkit report` and every command that picks a
# model for a board.
BoardOption = Annotated[
    str | None,
    typer.Option("--board", help="Pick for a microcontroller board: its flash and SRAM less a stated "
                                 "headroom (see `toolkit list --boards`)."),
]
MaxFlashKibOption = Annotated[
    float | None,
    typer.Option("--max-flash-kib", min=0, help="Budget: the model file's bytes in flash (KiB)."),
]
MaxRamKibOption = Annotated[
    float | None,
    typer.Option("--max-ram-kib", min=0,
                 help="Budget: the tensor arena TFLM measured, plus its margin (KiB)."),
]
ResumeOption = Annotated[
    bool | None,
    typer.Option("--resume/--restart",
                 help="An interrupted run of the same spec, seed and epochs continues from its last "
                      "completed epoch by default (said at the start); --restart discards it and starts "
                      "over. --resume insists on continuing (an error names the run's own precision)."),
]
