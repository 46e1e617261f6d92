"""Flower's SuperExec with warm ClientApp processes: `python -m flsuite.flower.superexec ARGS`.

Flower 1.42's SuperNode starts ``flower-superexec``, which starts a fresh ``flwr-clientapp``
process for every message. That process imports Flower's whole SuperNode stack (FastAPI,
SQLAlchemy, Alembic: ``flwr.supercore.error.catalog``) before it reads the message, and a
training message imports torch, Opacus and scikit-learn after: 1 to 4 s of imports per message
and site, for a secure-aggregation stage whose own work takes milliseconds.

This entry point runs the same ``flower-superexec`` command line (every argument is Flower's)
with one change: before the SuperExec starts, it forks a *launcher*, a single-threaded process
that imports those libraries once (``FLSUITE_CLIENTAPP_PRELOAD``, a comma-separated list of
modules; third-party libraries only, never the app: the ClientApp's own code is still loaded
from the FAB in every process). Each ``flwr-clientapp`` start is then a fork of the launcher
that runs Flower's ``flwr-clientapp`` command with the same arguments, so every message still
gets its own process, which exits when the message is answered; only the imports are warm.
A forked process shows Flower's command line (``flwr-clientapp ARGS`` in ps and top). A fork reseeds what a fresh process would have drawn anew (NumPy's global generator; Python's
``random`` reseeds itself), so no two messages share random state.

``FLSUITE_CLIENTAPP_FORK=0`` turns it off (Flower's own process start). If the launcher has
died, a start falls back to Flower's. The launcher exits when the SuperExec does (its request
pipe closes). Private API: it replaces ``subprocess`` in Flower's subprocess executor, checked
by ``check_patch`` on start (and by a test) so that a Flower upgrade fails loudly here.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

from flsuite.flower.module_view import module_view

__all__ = [
    "CLIENTAPP_COMMAND", "DEFAULT_PRELOAD", "FORK_ENV", "PRELOAD_ENV", "Launcher", "check_patch", "forking_enabled",
    "main", "patch", "preload_modules",
]

CLIENTAPP_COMMAND = "flwr-clientapp"  # what Flower's subprocess executor starts per message
FORK_ENV = "FLSUITE_CLIENTAPP_FORK"
PRELOAD_ENV = "FLSUITE_CLIENTAPP_PRELOAD"
#: Flower's ClientApp runtime, then what a site's train and evaluate handlers import.
DEFAULT_PRELOAD = ("flwr.supernode.cli.flwr_clientapp", "torch", "opacus", "sklearn.datasets", "dp_accounting")


def forking_enabled(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """False when FLSUITE_CLIENTAPP_FORK is 0 / false / no / off, else True."""
    return environ.get(FORK_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def preload_modules(environ: dict[str, str] | os._Environ = os.environ) -> tuple[str, ...]:
    """The modules the launcher imports: FLSUITE_CLIENTAPP_PRELOAD (comma-separated) or the default."""
    raw = environ.get(PRELOAD_ENV)
    if raw is None:
        return DEFAULT_PRELOAD
    return tuple(name.strip() for name in raw.split(",") if name.strip())


class Launcher:
    """A forked, warm process that forks one ``flwr-clientapp`` process per launch request.

    Create it before any thread starts (a fork copies only the calling thread). Requests are
    JSON lines on a pipe: {"args": [...], "quiet": bool}.
    """

    def __init__(self, preload: Sequence[str], *, entry: Callable[[], object] | None = None) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the launcher
            os.close(write_fd)
            _serve(read_fd, preload, entry or _flwr_clientapp)  # never returns
        os.close(read_fd)
        self.pid = pid
        self._write_fd: int | None = write_fd

    def launch(self, args: Sequence[str], *, quiet: bool) -> bool:
        """Ask the launcher to start `args`; False if it is gone (the caller then starts it itself)."""
        if self._write_fd is None:
            return False
        line = (json.dumps({"args": list(args), "quiet": quiet}) + "\n").encode()
        try:
            os.write(self._write_fd, line)  # one short write to a pipe: atomic
        except OSError:
            self.close()
            return False
        return True

    def close(self) -> None:
        """Close the request pipe: the launcher exits once it has read what was sent."""
        if self._write_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._write_fd)
            self._write_fd = None


def _flwr_clientapp() -> None:
    """Flower's `flwr-clientapp` command (it reads sys.argv)."""
    from flwr.supernode.cli import flwr_clientapp

    flwr_clientapp()


def _serve(read_fd: int, preload: Sequence[str], entry: Callable[[], object]) -> None:
    """The launcher's loop: import `preload`, then fork a ClientApp per request until EOF."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the ClientApp processes
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the SuperExec, which closes the pipe
        for name in preload:
            try:
                import_module(name)
            except Exception:  # noqa: BLE001 - a library that is missing or fails is imported (or not) by the app itself
                continue
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            buffered = b""
            while chunk := pipe.read(65536):
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    try:
                        request = json.loads(line)
                        args = [str(arg) for arg in request["args"]]
                        quiet = bool(request.get("quiet", False))
                    except (ValueError, KeyError, TypeError):
                        continue
                    _fork_clientapp(args, quiet=quiet, close_fd=read_fd, entry=entry)
    finally:
        os._exit(0)


def _fork_clientapp(args: list[str], *, quiet: bool, close_fd: int, entry: Callable[[], object]) -> None:
    """Fork; the child runs `entry` (Flower's `flwr-clientapp`) with sys.argv = args and exits with its code."""
    if os.fork() != 0:
        return
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with contextlib.suppress(OSError):
            os.close(close_fd)
        _reseed()
        _name_process(args)
        if quiet:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        sys.argv = [CLIENTAPP_COMMAND, *args[1:]]
        entry()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - report, then exit like a crashed process would
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _name_process(args: Sequence[str]) -> None:
    """Show a forked ClientApp as Flower would have started it: `flwr-clientapp ARGS` in ps and top.

    Linux only: the comm is set, and the command line (the bytes of the process's original
    argv, /proc/self/stat fields 48-49) is overwritten in place with args, cut to its length;
    Python keeps its own copy of argv. Elsewhere, or if /proc cannot be read, nothing changes.
    """
    with contextlib.suppress(OSError):
        with open("/proc/self/comm", "w") as comm:
            comm.write(CLIENTAPP_COMMAND[:15])
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49; the list starts at 3)
    except (OSError, ValueError, IndexError):
        return
    size = end - start
    if size <= 1:
        return
    text = "\0".join([CLIENTAPP_COMMAND, *args[1:]]).encode()[: size - 1]
    ctypes.memmove(start, text + b"\0" * (size - len(text)), size)


def _reseed() -> None:
    """Give a forked child the fresh random state a new process would have had."""
    random = sys.modules.get("numpy.random")  # its global generator is created on this import
    if random is not None:
        random.seed()  # no argument: fresh entropy from the OS


def check_patch() -> None:
    """Raise RuntimeError unless Flower's subprocess executor starts ClientApps the way patch() expects."""
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND
    from flwr.supercore.superexec.executor import subprocess_executor as module

    source = inspect.getsource(module.SubprocessExecutor.launch)
    if (not hasattr(module, "subprocess") or "subprocess.Popen(" not in source
            or CLIENTAPP_COMMAND not in TASK_TYPE_TO_COMMAND.values()):
        raise RuntimeError(
            "flwr's SubprocessExecutor no longer starts `flwr-clientapp` with subprocess.Popen: "
            "flsuite.flower.superexec was written for flwr 1.42; update it for the installed Flower."
        )


def patch(launcher: Launcher) -> None:
    """Make Flower's subprocess executor start ClientApps through `launcher` (others as before)."""
    from flwr.supercore.superexec.executor import subprocess_executor as module

    check_patch()
    real = subprocess.Popen

    def popen(args: Sequence[str], *rest: Any, **kwargs: Any) -> Any:
        if list(args)[:1] == [CLIENTAPP_COMMAND] and not rest:
            quiet = kwargs.get("stdout") is subprocess.DEVNULL
            if launcher.launch(list(args), quiet=quiet):
                return None  # Flower drops the Popen object
        return real(args, *rest, **kwargs)

    module.subprocess = module_view(subprocess, Popen=popen)


def main(argv: list[str] | None = None) -> None:
    """Run `flower-superexec` with argv (default sys.argv[1:]) and ClientApps forked from a warm launcher."""
    arguments = sys.argv[1:] if argv is None else argv
    if forking_enabled():
        launcher = Launcher(preload_modules())  # first: no thread has started yet
        patch(launcher)
    from flwr.supercore.cli import flower_superexec

    sys.argv = ["flower-superexec", *arguments]
    flower_superexec()


if __name__ == "__main__":
    main()
