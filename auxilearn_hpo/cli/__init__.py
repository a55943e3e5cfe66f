"""The ``auxilearn-hpo`` command.

Sub-commands::

    auxilearn-hpo tune --benchmark digits --backend ray --trials 12 --out runs/digits
    auxilearn-hpo report runs/digits
    auxilearn-hpo bench hypergrad | quality | overhead | search | storage

Each sub-command parses its own options (``auxilearn-hpo tune --help``): this parser only picks
the command, so that ``--help`` and a mistyped command answer without importing torch.

Modules: :mod:`.tune` (the parser and the search), :mod:`.settings` (flags over the recorded run,
checked once), :mod:`.runfolder` (``run.json``, its fingerprint, locks, move-aside),
:mod:`.backends` (Optuna, its worker processes, Ray Tune), :mod:`.progress` (the progress line
and Ctrl-C), :mod:`.report` (``report`` and the printed tables), :mod:`.extras` (what to install).
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]

_BENCHES = {
    "hypergrad": "auxilearn_hpo.bench.hypergrad",
    "quality": "auxilearn_hpo.bench.quality",
    "overhead": "auxilearn_hpo.bench.overhead",
    "search": "auxilearn_hpo.bench.search",
    "storage": "auxilearn_hpo.bench.storage",
}

_COMMANDS = {
    "tune": "search the outer settings of AuxiLearn on a benchmark with Ray Tune or Optuna",
    "report": "print the tables of a finished (or interrupted) tune run from its folder",
    "bench": "hypergrad | quality | overhead | search | storage: benchmark tables",
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="auxilearn-hpo", epilog="Run 'auxilearn-hpo <command> --help' for the options of a command.")
    commands = ap.add_subparsers(dest="command", metavar="{tune,report,bench}", required=True)
    for name, text in _COMMANDS.items():
        # add_help=False: "--help" after the command belongs to the command's own parser.
        sub = commands.add_parser(name, help=text, description=text, add_help=False)
        if name == "bench":
            sub.add_argument("bench", nargs="?", choices=list(_BENCHES), metavar="{" + ",".join(_BENCHES) + "}")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default: the process's arguments); returns its exit status.

    Called as the command itself (``argv`` None), the process ignores Ctrl-C once an
    interruption has been answered (exit status 130), so that another one cannot print a
    traceback on the way out; called with ``argv`` (from Python), signal handling is left alone."""
    try:
        code = _main(argv)
    except SystemExit as stop:  # argparse: --help (0) or bad input (2, one line after the usage)
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BrokenPipeError:
        # The reader went away (``auxilearn-hpo report DIR | head``): not an error. Point stdout
        # at /dev/null so that Python's flush at exit does not raise again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        if argv is None:
            _stop_hearing_ctrl_c()
        print("\nauxilearn-hpo: interrupted", file=sys.stderr)
        return 130
    if code == 130 and argv is None:  # interrupted, and said so: the rest is the way out
        _stop_hearing_ctrl_c()
    return code


def _stop_hearing_ctrl_c() -> None:
    """Ignore further Ctrl-C: after the first has been answered, another one landing in a message,
    in a library's clean-up or at interpreter exit would only print a traceback."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _main(argv: list[str] | None = None) -> int:
    import importlib

    ap = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        ap.print_help()
        return 0
    args, rest = ap.parse_known_args(argv)
    if args.command == "bench":
        if args.bench is None:
            if {"-h", "--help"} & set(rest):
                print(f"usage: auxilearn-hpo bench {{{','.join(_BENCHES)}}} [options]\n\n{_COMMANDS['bench']}")
                return 0
            ap.error(f"bench: choose one of {', '.join(_BENCHES)}")
        module = importlib.import_module(_BENCHES[args.bench])
        code = module.main(rest)  # a bench returns its table, or an exit status
        return code if isinstance(code, int) and not isinstance(code, bool) else 0
    if args.command == "tune":
        from .tune import tune

        return tune(rest)
    from .report import report

    return report(rest)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
