"""What `toolkit export` and `toolkit parity` do for several specs, and the export stage of the
pipeline (toolkit.experiments.pipeline): export each spec to the chosen formats, check parity of
what changed (and of skipped files whose parity never passed), and say at the end which exports
or parity checks failed. Presentation stays with the caller, through `ExportView`.

    run = export_and_check(ExportRequest(exps=["CNN_1L_Dropout_Exp6"], formats=["all"]), view)
    run.raise_for_failures()     # exit 5 if parity failed, else 7 if some export failed
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from toolkit.core import artifacts, data
from toolkit.core.errors import ArtifactError, ParityError, PartialFailure, UsageError

Hook = Callable[[str, str], None]  # (event: "start" | "done", key)


class ExportView(Protocol):
    """What the caller shows while specs are exported and checked (the CLI: progress bars and the
    status table of each spec)."""

    def exporting(self, name: str, total: int) -> contextlib.AbstractContextManager[Hook]: ...

    def checking(self, name: str, total: int) -> contextlib.AbstractContextManager[Hook]: ...

    def spec_done(self, outcome: SpecOutcome) -> None: ...


class QuietView:
    """An ExportView that shows nothing (library callers, tests)."""

    @contextlib.contextmanager
    def exporting(self, name: str, total: int) -> Iterator[Hook]:
        yield lambda event, key: None

    checking = exporting

    def spec_done(self, outcome: SpecOutcome) -> None:
        return None


@dataclass(frozen=True)
class ExportRequest:
    exps: Sequence[str] | None = None  # names or globs; default: every trained spec
    formats: Sequence[str] | None = None
    precisions: Sequence[str] | None = None
    opset: int | None = None
    force: bool = False
    parity: bool = True
    root: Path | None = None
    data_dir: Path | None = None
    tta: bool = False  # also the flip test-time-augmentation variants (toolkit.export.tta)


@dataclass
class SpecOutcome:
    name: str
    skipped: list[str] = field(default_factory=list)  # unchanged exports, not redone
    failed: dict[str, str] = field(default_factory=dict)  # key -> why its export failed
    kept: list[str] = field(default_factory=list)  # failed keys whose previous valid file was kept
    parity: str = "checked"  # "checked" | "not needed" | "not run" (--no-parity)
    skipped_rows: dict[str, str] = field(default_factory=dict)  # row -> why it did not run here


@dataclass
class ExportRun:
    specs: list[SpecOutcome] = field(default_factory=list)
    failed_exports: list[str] = field(default_factory=list)  # "NAME/KEY"
    failed_parity: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # "NAME/KEY" -> why its export failed

    def raise_for_failures(self) -> None:
        """Exit 5 if any parity check failed (it says which); else 7 if some export failed."""
        if self.failed_parity:
            extra = f"; export failed: {', '.join(self.failed_exports)}" if self.failed_exports else ""
            raise ParityError(f"parity failed for {', '.join(self.failed_parity)}{extra}. "
                              "See the table above for which check failed by how much")
        if self.failed_exports:
            first = self.failed_exports[0]
            why = self.reasons.get(first, "see above")
            others = len(self.failed_exports) - 1
            more = f" (and {others} more, listed above)" if others else ""
            storage = "cannot write there" in why
            fix = "" if storage else " Rerun with --verbose for the converter's traceback"
            raise PartialFailure(f"export failed for {first}: {why}{more}. The other exports completed "
                                 "and were checked; a failed re-export keeps the previous file and its "
                                 f"record.{fix}")


def trained_names(exps: Sequence[str] | None, root: Path | None) -> list[str]:
    """Named specs (globs allowed), else every trained spec under the root; a spec named outright
    must be trained (an ArtifactError naming the train command)."""
    from toolkit.specs import match_specs

    if exps:
        explicit = {e for e in exps if not any(ch in e for ch in "*?[")}
        trained = set(artifacts.trained_specs(root))
        names = [s.name for s in match_specs(list(exps)) if s.name in explicit or s.name in trained]
        if not names:
            raise ArtifactError(f"no trained spec under {artifacts.resolve_root(root)} matches "
                                f"{', '.join(exps)}; train one first: toolkit train --exp NAME")
        for name in names:
            artifacts.spec_artifacts(name, root).require_trained()
        return names
    names = artifacts.trained_specs(root)
    if not names:
        raise UsageError(f"no trained specs under {artifacts.resolve_root(root)}; train one first "
                         "(toolkit train --exp NAME) or pass --exp")
    return names


def export_and_check(request: ExportRequest, view: ExportView | None = None) -> ExportRun:
    """Export every chosen spec to every chosen format, then check parity of what needs it."""
    from toolkit.export import pipeline, registry

    view = view or QuietView()
    chosen = registry.select(list(request.formats) if request.formats else None,
                             list(request.precisions) if request.precisions else None, tta=request.tta)
    names = trained_names(request.exps, request.root)  # refuses untrained specs before any work
    if request.opset is not None and any(f.format in pipeline.ONNX_BASED for f in chosen):
        from toolkit.export.onnx import check_opset

        check_opset(request.opset)
    dataset = data.load(request.data_dir)
    run = ExportRun()
    for name in names:
        with view.exporting(name, len(chosen)) as hook:
            settings = pipeline.ExportSettings(opset=request.opset, force=request.force)
            result = pipeline.export_spec(name, chosen, root=request.root, settings=settings, dataset=dataset,
                                          hook=hook)
        outcome = SpecOutcome(name, skipped=[o.key for o in result.outcomes if o.status == "skipped"],
                              failed={o.key: o.error or "failed" for o in result.failed},
                              kept=[o.key for o in result.failed if o.kept_previous])
        run.failed_exports += [f"{name}/{o.key}" for o in result.failed]
        run.reasons.update({f"{name}/{o.key}": o.error or "failed" for o in result.failed})
        verdict = _verdicts(result.outcomes)
        to_check = [o.key for o in result.outcomes if o.status == "exported"
                    or (o.status == "skipped" and verdict[o.key] != "pass")]
        if request.parity and to_check:
            checked = _check(name, to_check, request.root, dataset, view)
            run.failed_parity += [f"{name}/{r.name}" for r in checked.failed]
            outcome.skipped_rows = checked.skipped_rows
        outcome.parity = "not run" if not request.parity else "checked" if to_check else "not needed"
        view.spec_done(outcome)
        if request.parity:  # earlier parity failures of skipped exports still count
            run.failed_parity += [f"{name}/{o.key}" for o in result.outcomes if o.status == "skipped"
                                  and o.key not in to_check and verdict[o.key] == "fail"]
    return run


def _verdicts(outcomes) -> dict[str, str]:
    """Each export's parity state. A skipped export's file is the one its entry names (that is why
    it was skipped); a derived export (the C source) has its source's verdict."""
    from toolkit.export.registry import FORMATS

    by_key = {o.key: o.entry for o in outcomes}
    verdict = {}
    for outcome in outcomes:
        source = FORMATS[outcome.key].source if outcome.key in FORMATS else None
        entry = by_key.get(source, outcome.entry) if source else outcome.entry
        verdict[outcome.key] = entry.parity_state(entry.sha256)
    return verdict


def check_exports(exps: Sequence[str] | None, keys: Sequence[str] | None, *, root: Path | None,
                  data_dir: Path | None, view: ExportView | None = None) -> ExportRun:
    """`toolkit parity`: recheck the listed exports (None: all) of each spec on the test set."""
    from toolkit.export.record import read_exports

    view = view or QuietView()
    names = trained_names(exps, root)
    dataset = data.load(data_dir)
    run = ExportRun()
    for name in names:
        entries = read_exports(artifacts.spec_artifacts(name, root)).exports
        present = [e.key for e in entries if keys is None or e.key in keys]
        outcome = _check(name, present, root, dataset, view)
        run.failed_parity += [f"{name}/{r.name}" for r in outcome.failed]
        run.failed_exports += [f"{name}/{k}" for k in outcome.not_checked]
        view.spec_done(SpecOutcome(name, skipped_rows=outcome.skipped_rows))
    return run


def _check(name: str, keys: list[str], root: Path | None, dataset, view: ExportView):
    from toolkit.export.parity_rows import check_spec, planned_rows

    with view.checking(name, len(planned_rows(keys)) + 1) as hook:
        return check_spec(name, root=root, keys=keys, dataset=dataset, hook=hook)
