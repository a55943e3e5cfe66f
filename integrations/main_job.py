"""Moved: the command line is :mod:`auxilearn_hpo.cli` (``tune`` in :mod:`auxilearn_hpo.cli.tune`,
``report`` in :mod:`auxilearn_hpo.cli.report`). This name stays so that old imports keep working."""
from auxilearn_hpo.cli.errors import UsageError
from auxilearn_hpo.cli.report import report
from auxilearn_hpo.cli.tune import tune

__all__ = ["tune", "report", "UsageError"]
