"""The entry point: run the app; user errors exit 2 with one line, Ctrl-C 130, SIGTERM 143, bugs 1."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from chexcut.cli.app import app  # noqa: F401 (its commands are registered by the package: chexcut/cli/__init__.py)
from chexcut.cli.panels import command
from chexcut.errors import ChexcutError
from chexcut.signals import report_interrupted


def _environment_error(e: BaseException) -> str | None:
    """One line for failures the environment causes (no space, quota, read-only, permissions); else None."""
    import errno

    codes = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
             errno.EIO: "the device failed (input/output error)"}
    from chexcut.fileio import last_failed_write

    failed = last_failed_write()
    if isinstance(e, OSError) and e.errno in codes:
        where = failed or e.filename or "a file"
        return (f"{codes[e.errno]} writing {where}; earlier checkpoints and caches are kept, temporary files "
                f"removed: free space or fix the permissions, then run the same command again")
    if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:  # a name no writer checked first
        name = os.path.basename(str(e.filename or "a file"))
        return f"a file name is longer than the file system allows: {name[:40]}...; give a shorter name"
    text = str(e)
    if "No space left on device" in text or "Disk quota exceeded" in text:  # safetensors and torch.save wrap it
        return (f"no space left on the device while writing {failed or 'a file'}; earlier checkpoints and caches are "
                f"kept, temporary files removed: free space, then run the same command again (finetune: --resume)")
    return None


def main(argv: Optional[list[str]] = None) -> None:
    """Run the app; user errors exit 2 with one line, Ctrl-C 130, bugs 1 (tracebacks with --debug)."""
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    from chexcut.fileio import forget_failed_writes

    forget_failed_writes()  # a command called again in one process (a notebook, the tests) names its own files
    from chexcut.signals import sigterm_interrupts

    try:
        with sigterm_interrupts():  # every command: SIGTERM (scancel, a time limit) is one line and exit 143
            rv = command().main(args=args, prog_name="chexcut", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        if code == 130:  # Typer turns an interrupt into an exit code itself
            code = report_interrupted()
    except ChexcutError as e:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"chexcut: error: {e}", file=sys.stderr)
        code = e.exit_code
    except typer.Exit as e:
        code = e.exit_code
    except click_exception as e:  # bad option values, missing arguments: one line, like every user error
        where = getattr(getattr(e, "ctx", None), "command_path", None)
        hint = f" (see `{where} --help`)" if where else ""
        if "'--json' requires an argument" in e.format_message():
            hint = " (--json PATH writes the JSON to a file, --json - prints it to stdout)"
        msg = ' '.join(e.format_message().replace("Value error, ", "").split())
        print(f"chexcut: error: {msg}{hint}", file=sys.stderr)
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = report_interrupted()
    except BrokenPipeError:
        code = 0
    except Exception as e:
        environment = _environment_error(e)
        if environment:  # a full disk, a read-only file system, no permission: the user's to fix
            if debug:
                import traceback

                traceback.print_exc()
            print(f"chexcut: error: {environment}", file=sys.stderr)
            sys.exit(2)
        if debug:
            import traceback

            traceback.print_exc()
        print(f"chexcut: internal error: {type(e).__name__}: {e}"
              + ("" if debug else " (rerun with --debug for the traceback)"), file=sys.stderr)
        code = 1
    sys.exit(code)
