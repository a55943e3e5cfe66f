"""``python -m auxilearn_hpo.cli``: the ``auxilearn-hpo`` command."""
import sys

from . import main

sys.exit(main())
