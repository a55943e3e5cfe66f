"""The ``auxilearn-hpo`` command.

Sub-commands::

    auxilearn-hpo tune --benchmark digits --backend ray --trials 12 --out runs/digits
    auxilearn-hpo report runs/digits
    auxilearn-hpo bench hypergrad | quality | overhead | search
"""
from __future__ import annotations

import sys

__all__ = ["main"]

_BENCHES = {
    "hypergrad": "auxilearn_hpo.bench.hypergrad",
    "quality": "auxilearn_hpo.bench.quality",
    "overhead": "auxilearn_hpo.bench.overhead",
    "search": "auxilearn_hpo.integrations.search_bench",
}

_USAGE = """usage: auxilearn-hpo {tune,report,bench} ...

  tune     search the outer settings of AuxiLearn on a benchmark with Ray Tune or Optuna
  report   print the tables of a finished (or interrupted) tune run from its folder
  bench    hypergrad | quality | overhead | search: benchmark tables

Run 'auxilearn-hpo <command> --help' for the options of a command."""


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (``auxilearn-hpo report DIR | head``): not an error. Point stdout
        # at /dev/null so that Python's flush at exit does not raise again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("\nauxilearn-hpo: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None = None) -> int:
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "bench":
        if not rest or rest[0] not in _BENCHES:
            print(f"auxilearn-hpo bench: choose one of {', '.join(_BENCHES)}", file=sys.stderr)
            return 2
        module = importlib.import_module(_BENCHES[rest[0]])
        module.main(rest[1:])
        return 0
    if command in ("tune", "report"):
        from auxilearn_hpo.integrations import main_job

        return int(getattr(main_job, command)(rest) or 0)
    print(f"auxilearn-hpo: unknown command {command!r}\n\n{_USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
