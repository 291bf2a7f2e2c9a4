"""Compare two JSON reports figure by figure: every number to a relative tolerance, every
other value exactly. Used to check a faster code path against the one it replaces:

    .venv/bin/python bench/compare_reports.py before.json after.json [--rtol 1e-9]

Prints each differing path and exits 1 when any differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def differences(a: Any, b: Any, rtol: float, path: str = "") -> list[str]:
    """The paths where ``a`` and ``b`` differ (numbers beyond ``rtol``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = [f"{path}.{k}: only in one" for k in sorted(set(a) ^ set(b))]
        for key in sorted(set(a) & set(b)):
            found += differences(a[key], b[key], rtol, f"{path}.{key}")
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items against {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, rtol, f"{path}[{i}]")]
    numbers = (int, float)
    if (isinstance(a, numbers) and isinstance(b, numbers)
            and not isinstance(a, bool) and not isinstance(b, bool)):
        if abs(a - b) <= rtol * max(abs(a), abs(b)):
            return []
        return [f"{path}: {a!r} against {b!r}"]
    return [] if a == b else [f"{path}: {a!r} against {b!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rtol", type=float, default=1e-9)
    args = parser.parse_args()
    with open(args.before, encoding="utf-8") as f, open(args.after, encoding="utf-8") as g:
        found = differences(json.load(f), json.load(g), args.rtol)
    for line in found:
        print(line)
    print(f"{len(found)} differences (relative tolerance {args.rtol:g})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
