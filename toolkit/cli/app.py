"""The `toolkit` command line: thin Typer commands over library functions, listed in COMMANDS.

This is the only place that catches ToolkitError: each command runs inside `boundary`, which
resolves the artifacts root once (flag, then TOOLKIT_ARTIFACTS, then ./artifacts), loads the user
spec file (`toolkit --specs FILE`, then TOOLKIT_SPECS, then ARTIFACTS/specs.toml; its path is
exported in TOOLKIT_SPECS for every process the command starts) and turns an error into one line
on stderr and its exit code (a traceback only with --verbose). Errors of the
option parser itself (an unknown option, a bad value) get the same one line, with exit code 2,
from `_OneLineErrors`, the app's command group. Heavy libraries (TensorFlow, ONNX Runtime) are
imported inside commands, never at start-up.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

# Before TensorFlow is ever imported: its C++ start-up chatter drowns the useful output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import typer  # noqa: E402
from rich.markup import escape  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from toolkit.cli import analysis, bench, data, export, loadtest, serve, sweep, train, tune  # noqa: E402
from toolkit.cli.output import err_console, print_error  # noqa: E402
from toolkit.core.errors import ToolkitError  # noqa: E402

try:  # Typer 0.2x vendors Click as typer._click; older Typers run on Click itself
    from typer._click import exceptions as click_errors  # noqa: E402
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click import exceptions as click_errors  # noqa: E402

# Every command, in the order `toolkit --help` lists them.
COMMANDS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("list", data.list_specs),
    ("data", data.data_info),
    ("train", train.train_cmd),
    ("run", train.run_cmd),
    ("export", export.export_cmd),
    ("parity", export.parity_cmd),
    ("predict", export.predict_cmd),
    ("bench", bench.bench_cmd),
    ("report", bench.report_cmd),
    ("profile", bench.profile_cmd),
    ("analyze", analysis.analyze_cmd),
    ("recommend", analysis.recommend_cmd),
    ("sweep", sweep.sweep_cmd),
    ("tune", tune.tune_cmd),
    ("serve", serve.serve_cmd),
    ("loadtest", loadtest.loadtest_cmd),
)


class _OneLineErrors(TyperGroup):
    """Usage errors of the option parser (unknown option, bad or missing value) as one line,
    `error: ...`, exit 2, like every other error of the CLI, instead of Click's boxed block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `toolkit` alone: the help, as before
                return super().main(args, prog_name, complete_var, standalone_mode=True, **extra)
            command = exc.ctx.command_path if getattr(exc, "ctx", None) else "toolkit"
            print_error(f"{exc.format_message().rstrip('.')}. See '{command} --help'")
            sys.exit(exc.exit_code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        # Without standalone mode, Click returns the exit code of typer.Exit (our commands
        # return None when they complete).
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="toolkit",
    cls=_OneLineErrors,
    help="Train Fashion-MNIST classifiers from the seed's specs, export, verify and benchmark them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state: dict[str, Any] = {"verbose": False, "specs": None}
# Commands that may name a spec file that does not exist yet: they write it.
WRITES_SPEC_FILE = ("tune",)


def boundary(fn: Callable[..., Any], *, writes_specs: bool = False) -> Callable[..., Any]:
    """The error boundary every command runs in (and where --artifacts is resolved, and the user
    spec file loaded, once)."""
    from toolkit.core.artifacts import resolve_root, storage_error

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            if "artifacts" in kwargs:
                kwargs["artifacts"] = resolve_root(kwargs["artifacts"])
            from toolkit.specs.registry import spec_file_scope

            root = kwargs.get("artifacts") or resolve_root(None)
            with spec_file_scope(_state["specs"], root, create=writes_specs):
                return fn(*args, **kwargs)
        except ToolkitError as exc:
            if _state["verbose"]:
                err_console.print_exception()
            print_error(exc.message)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted:[/] nothing half-written was left behind")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:
            if _state["verbose"]:
                raise
            storage = storage_error(exc)  # a full disk or a read-only folder, wherever it surfaced
            if storage is not None:
                print_error(storage.message)
                raise typer.Exit(storage.exit_code) from None
            err_console.print(
                f"[bold red]unexpected error:[/] {type(exc).__name__}: {escape(str(exc))}. "
                "Rerun with --verbose for the traceback and report it.", soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def _global(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks.")] = False,
    specs: Annotated[
        Path | None,
        typer.Option("--specs", metavar="FILE",
                     help="A TOML file of user specs (env TOOLKIT_SPECS; default ARTIFACTS/specs.toml "
                          "when it exists; docs/specs.md)."),
    ] = None,
) -> None:
    _state["verbose"] = verbose or bool(os.environ.get("TOOLKIT_VERBOSE"))
    _state["specs"] = specs
    if _state["verbose"]:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
        os.environ["TOOLKIT_VERBOSE"] = "1"


for _name, _command in COMMANDS:
    app.command(_name)(boundary(_command, writes_specs=_name in WRITES_SPEC_FILE))


def main() -> None:
    # A kill from a scheduler (SIGTERM) unwinds like Ctrl-C, so temp files are cleaned up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    app(prog_name="toolkit")


if __name__ == "__main__":
    sys.exit(main())
