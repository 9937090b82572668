"""Compare two report.json files number by number (``make demo``'s "must not change" check).

``python tools/compare_reports.py OLD.json NEW.json [--rtol 1e-9]`` prints every number that differs
by more than ``rtol`` (relative) and every key present in one file only, skipping timings (keys
containing "seconds" or "timings") and paths; exits 1 when something differs."""
from __future__ import annotations

import argparse
import json
import math
import sys


def _skip(key: str) -> bool:
    return "seconds" in key or key in ("timings", "data", "external")


def diff(a, b, path: str, rtol: float, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if _skip(str(key)):
                continue
            if key not in a or key not in b:
                out.append(f"{path}/{key}: only in {'new' if key not in a else 'old'}")
            else:
                diff(a[key], b[key], f"{path}/{key}", rtol, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", rtol, out)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if not math.isclose(a, b, rel_tol=rtol, abs_tol=0.0) and not (a == 0 and b == 0):
            out.append(f"{path}: {a!r} vs {b!r}")
    elif a != b:
        out.append(f"{path}: {a!r} vs {b!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rtol", type=float, default=1e-9)
    args = parser.parse_args()
    out: list[str] = []
    with open(args.old) as fa, open(args.new) as fb:
        diff(json.load(fa), json.load(fb), "", args.rtol, out)
    print("\n".join(out) if out else f"equal in every non-timing number (rtol {args.rtol:g})")
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())
