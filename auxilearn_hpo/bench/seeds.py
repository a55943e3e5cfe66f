"""``--seeds`` of the benchmark commands: a count, a range or a list."""
from __future__ import annotations

__all__ = ["parse_seeds"]


def parse_seeds(text: str) -> list[int]:
    """``"10"`` -> seeds 0..9; ``"1000-1009"`` -> 1000..1009 (both ends); ``"3,7,9"`` -> those;
    items of a list may be ranges (``"1-3,7"``).

    Raises:
        ValueError: naming ``--seeds`` and what it takes.
    """
    what = ("--seeds takes a count N (seeds 0..N-1), a range A-B (both ends) or a list such as 3,7,9; "
            f"got {text!r}")
    text = str(text).strip()
    try:
        if text.isdigit():
            n = int(text)
            if n < 1:
                raise ValueError
            return list(range(n))
        seeds: list[int] = []
        for item in text.split(","):
            low, sep, high = item.strip().partition("-")
            a, b = int(low), int(high) if sep else int(low)
            if a < 0 or b < a:
                raise ValueError
            seeds += range(a, b + 1)
    except ValueError:
        raise ValueError(what) from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds names a seed twice: {text!r}")
    return seeds
