"""Benchmark scripts behind ``auxilearn-hpo bench ...``; each prints a pandas table."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_set_option(ap: argparse.ArgumentParser, whom: str) -> None:
    """``--set KEY=VALUE`` (repeatable): a :class:`~auxilearn_hpo.learner.LearnerConfig` field for ``whom``."""
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help=f"a LearnerConfig field for {whom}, e.g. --set update_every=3 (repeatable; the value is "
                         "read as JSON, else as a string)")


def parse_set(items: list[str], flag: str = "--set") -> dict[str, Any]:
    """The ``flag`` items (``KEY=VALUE``) as a dict, each value read as JSON, else as a string.

    Only the syntax is checked (a ``ValueError`` naming the item); what the settings mean is
    checked where they are used (``LearnerConfig.from_dict``, the trial's check).

    Example:
        >>> parse_set(["update_every=3", "fused=true", "solver=cg"])
        {'update_every': 3, 'fused': True, 'solver': 'cg'}
    """
    config: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} must be KEY=VALUE, got {item!r}")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    return config


def learner_settings(ap: argparse.ArgumentParser, items: list[str], flag: str = "--set") -> dict[str, Any]:
    """The ``flag`` items (``KEY=VALUE``) as a dict of checked ``LearnerConfig`` fields;
    ``ap.error`` (exit 2) if not."""
    from ..learner import LearnerConfig

    try:
        config = parse_set(items, flag)
        LearnerConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        ap.error(str(e) if str(e).startswith(flag) else f"{flag}: {e}")
    return config
