"""The examples in the core's docstrings print what they say."""
import doctest
import importlib
import pkgutil

import pytest

import auxilearn_hpo

# a package's __main__ runs its program when imported, so it has no examples to run
MODULES = sorted(m.name for m in pkgutil.walk_packages(auxilearn_hpo.__path__, "auxilearn_hpo.")
                 if not m.name.startswith("auxilearn_hpo.integrations") and not m.name.endswith(".__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
