"""Check that a run of ./run_all.sh built every table, every figure and the report (used by CI).

    python scripts/check_outputs.py --since EPOCH_SECONDS [--tables results/tables] [--figures figures]

Each output must exist and be newer than --since, so files committed earlier do not count."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.figures import FIGURES  # noqa: E402

TABLES = ["accuracy", "accuracy_full", "attribution", "coverage", "overfocus", "rho_ablation",
          "attribution_methods", "architectures", "overhead", "ema_decay", "reported_vs_reproduced"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--since", type=float, required=True)
    parser.add_argument("--tables", type=Path, default=ROOT / "results" / "tables")
    parser.add_argument("--figures", type=Path, default=ROOT / "figures")
    args = parser.parse_args()
    expected = [args.tables / f"{name}.md" for name in TABLES]
    expected += [args.figures / f"{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")]
    stale = [str(p) for p in expected if not p.exists() or p.stat().st_mtime < args.since]
    for path in stale:
        print(f"missing or not rebuilt: {path}", file=sys.stderr)
    print(f"{len(expected) - len(stale)} of {len(expected)} outputs built")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
