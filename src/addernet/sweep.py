"""The results table of a multirun: one row per job, printed and written as ``results.md`` in the sweep dir.

Each job writes its metrics to ``<job dir>/metrics.json`` (see :func:`addernet.training.train`); the table
is built from the files, so it works with any Hydra launcher, local or on a cluster.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from addernet.training import METRICS_FILE

COLUMNS = ("val/acc_best", "val/acc", "test/acc", "test/acc_top5", "epochs", "fit_seconds")


def collect_results(sweep_dir: Path) -> list[dict]:
    """One dict per job directory: its overrides and metrics, or ``status: no result`` if it wrote none."""
    rows = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml"), key=lambda p: _job_order(p.parents[1])):
        job_dir = overrides_file.parents[1]
        metrics_file = job_dir / METRICS_FILE
        row = {"job": job_dir.name, "overrides": " ".join(OmegaConf.load(overrides_file))}
        if metrics_file.is_file():
            row.update(json.loads(metrics_file.read_text()), status="ok")
        else:
            row["status"] = "no result (failed or still running)"
        rows.append(row)
    return rows


def _job_order(job_dir: Path):
    return (0, int(job_dir.name)) if job_dir.name.isdigit() else (1, job_dir.name)


def format_table(rows: list[dict]) -> str:
    header = ["job", "overrides", *COLUMNS, "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["job"], row["overrides"]]
        cells += [_fmt(row.get(c)) for c in COLUMNS]
        lines.append("| " + " | ".join(cells + [row["status"]]) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value <= 1.0:
        return f"{100 * value:.2f}%"
    return f"{value:.0f}" if isinstance(value, (int, float)) else str(value)


class ResultsTable(Callback):
    """Hydra callback: at the end of a multirun, print and save the table of its jobs."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_results(sweep_dir)
        if not rows:
            return
        table = format_table(rows)
        (sweep_dir / "results.md").write_text(table)
        print(f"\nResults of {len(rows)} runs ({sweep_dir / 'results.md'}):\n{table}")
