"""Exporters (one module per format), the registry of formats and precisions, the export
pipeline and its record (exports.json).

Layering: this package imports only the toolkit's low layers (errors, artifacts, contract,
records, quiet, _tf, models, data); parity, the benchmarks, the report and the CLI import it,
never the reverse (tests/test_layers.py enforces it). Importing it is cheap: exporters import
TensorFlow only when they run.
"""

from toolkit.export.record import ExportEntry, ExportsRecord, ParitySummary, read_exports, write_exports
from toolkit.export.registry import FORMAT_NAMES, FORMATS, PRECISIONS, ExportFormat, export_path, select

__all__ = ["FORMATS", "FORMAT_NAMES", "PRECISIONS", "ExportEntry", "ExportFormat", "ExportsRecord",
           "ParitySummary", "export_path", "read_exports", "select", "write_exports"]
