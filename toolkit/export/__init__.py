"""Exporters (one module per format) and the registry of formats and precisions.

Importing this package is cheap: exporters import TensorFlow only when they run.
"""

from toolkit.export.registry import (
    FORMAT_NAMES,
    FORMATS,
    PRECISIONS,
    ExportFormat,
    export_path,
    read_exports,
    select,
)

__all__ = ["FORMATS", "FORMAT_NAMES", "PRECISIONS", "ExportFormat", "export_path", "read_exports", "select"]
