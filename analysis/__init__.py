"""Analysis of SGDrop reproduction runs: pure functions from result dicts to tables and figures.

Entry points (run from the repository root)::

    python -m analysis.tables   [--results results/] [--out results/tables/]
    python -m analysis.figures  [--results results/] [--out figures/] [--list] [--only NAME]
    python -m analysis.compare  [--results results/] [--out results/tables/]

``analysis.results`` finds and flattens the runs (``result.json`` files); the other modules never
read files except through it. Nothing here imports torch, so the analysis runs anywhere.
"""
