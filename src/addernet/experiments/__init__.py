"""What the entry points in ``src/`` call: training and evaluation runs (``run``), sweeps and their reports,
benchmarks, and export/prediction of deployed models (``deploy``)."""
