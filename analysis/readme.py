"""Paste the generated tables into README.md: `python -m analysis.readme [--tables results/tables]`.

Every block of the README between `<!-- table:NAME -->` and `<!-- /table -->` is replaced by the
Markdown of `results/tables/NAME.md` (without its title line), so the numbers in the README are the
ones the analysis scripts printed, never typed by hand."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from sgdrop.io import write_text

BLOCK = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n).*?(<!-- /table -->)", re.S)


def splice(readme: str, tables: Path) -> tuple[str, list[str]]:
    """README text with every table block refreshed, and the names of tables not found."""
    missing = []

    def fill(match: re.Match) -> str:
        path = tables / f"{match['name']}.md"
        if not path.exists():
            missing.append(match["name"])
            return match[0]
        body = path.read_text(encoding="utf-8").split("\n", 1)[1].strip()  # drop the "# Title" line
        return f"{match[1]}{body}\n{match[3]}"

    return BLOCK.sub(fill, readme), missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.readme", description=__doc__.split("\n")[0])
    parser.add_argument("--tables", type=Path, default=Path("results/tables"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args(argv)
    text, missing = splice(args.readme.read_text(encoding="utf-8"), args.tables)
    write_text(args.readme, text)
    for name in missing:
        print(f"analysis.readme: no {args.tables / name}.md; block left as it was", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
