"""Reproducible studies and the benchmark harness of flsuite.

``python -m experiments.bench [--quick]`` runs every measurement and writes
``experiments/results/bench.json`` and the tables in ``experiments/README.md``.
The single-purpose scripts beside it (``dp_step_cost.py``, ``secagg_bench.py``,
``registry_bench.py``) still run on their own; the harness reuses their code.
"""

__all__: list[str] = []
