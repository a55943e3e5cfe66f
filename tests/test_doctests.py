"""The examples in the core's docstrings print what they say."""
import doctest
import importlib
import pkgutil

import pytest

import auxilearn_hpo

MODULES = sorted(m.name for m in pkgutil.walk_packages(auxilearn_hpo.__path__, "auxilearn_hpo.")
                 if not m.name.startswith("auxilearn_hpo.integrations"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
