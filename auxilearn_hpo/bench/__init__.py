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


def learner_settings(ap: argparse.ArgumentParser, items: list[str], flag: str = "--set") -> dict[str, Any]:
    """The ``flag`` items (``KEY=VALUE``) as a dict of checked ``LearnerConfig`` fields;
    ``ap.error`` (exit 2) if not."""
    from ..learner import LearnerConfig

    config: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"{flag} must be KEY=VALUE, got {item!r}")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    try:
        LearnerConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        ap.error(f"{flag}: {e}")
    return config
