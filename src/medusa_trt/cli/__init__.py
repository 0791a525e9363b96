"""The `medusa-trt` command line. Thin: each command parses, calls the library, renders.

Heavy libraries (torch, transformers, tensorrt_llm) are imported inside command bodies only.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from typing import Annotated

import typer
from rich.markup import escape

from medusa_trt import __version__, logs
from medusa_trt.cli._common import err_console
from medusa_trt.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, MedusaTrtError
from medusa_trt.fsio import is_disk_error, os_failure

app = typer.Typer(
    name="medusa-trt",
    help="Llama 3.x + Medusa speculative decoding: convert, build, serve and benchmark "
    "(TensorRT-LLM on GPU hosts, a PyTorch reference runtime anywhere).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medusa-trt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", envvar="MEDUSA_TRT_DEBUG", help="Show tracebacks.")] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help=f"Log diagnostics (debug level) on stderr; ${logs.LOG_LEVEL_ENV} sets the level otherwise.",
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    _state["debug"] = debug
    logs.configure(logs.level_from(verbose))


# --- commands (one thin module each) ---------------------------------------------------------
# `commands.register` imports each module named in COMMAND_MODULES and calls its `register(app)`;
# importing a module alone registers nothing. Keep those imports light.
from medusa_trt.cli import commands as _commands  # noqa: E402

_commands.register(app)


class Terminated(BaseException):
    """SIGTERM raised as an exception, so cleanup runs: child tools are stopped, temp output removed."""


def _on_sigterm(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (errors mapped to one line + hint)."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = "--debug" in args or os.environ.get("MEDUSA_TRT_DEBUG", "") not in ("", "0")
    # Servers install their own signal handlers over this one; everything else unwinds on SIGTERM.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        rv = app(args=args, prog_name="medusa-trt", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except Terminated:
        err_console.print("terminated")
        return 128 + signal.SIGTERM
    except MedusaTrtError as e:
        if _state["debug"]:
            traceback.print_exc()
        # Messages hold paths and flags like `medusa-trt[trtllm]`: print them as text, not markup.
        err_console.print(f"[bold red]error:[/] {escape(e.message)}", soft_wrap=True)
        if e.hint:
            err_console.print(f"[yellow]hint:[/] {escape(e.hint)}", soft_wrap=True)
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted")
        return EXIT_INTERRUPTED
    except typer.TyperException as e:  # click usage errors: bad option, missing argument
        show = getattr(e, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"error: {e}")
        return int(getattr(e, "exit_code", EXIT_USAGE))
    except OSError as e:  # a full disk, a read-only or forbidden directory: one line naming the path
        if _state["debug"]:
            traceback.print_exc()
        failure = os_failure(e, e.filename, "use") if e.filename and is_disk_error(e) else None
        if failure is None:
            return _unexpected(e)
        err_console.print(f"[bold red]error:[/] {escape(failure.message)}", soft_wrap=True)
        err_console.print(f"[yellow]hint:[/] {escape(failure.hint or '')}", soft_wrap=True)
        return EXIT_FAILURE
    except Exception as e:  # a bug or an unforeseen OS error: still one line, the traceback with --debug
        if _state["debug"]:
            traceback.print_exc()
        return _unexpected(e)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _unexpected(e: BaseException) -> int:
    err_console.print(f"[bold red]error:[/] {escape(f'{e.__class__.__name__}: {e}')}", soft_wrap=True)
    if not _state["debug"]:
        err_console.print("[yellow]hint:[/] Rerun with --debug for the traceback.", soft_wrap=True)
    return EXIT_FAILURE


def main() -> None:
    code = run()
    exiting = sys.modules.get("medusa_trt.runtime.exiting")  # loaded only by commands that generate
    if exiting is not None and exiting.skip_finalization():
        exiting.end_process(code)  # after torch.distributed, finalization can abort (SIGABRT): see there
    sys.exit(code)
