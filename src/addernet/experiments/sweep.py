"""Sweeps: their definitions in ``sweeps/`` (W&B's format, read by Hydra too) and the results table.

A sweep is written once, as a W&B sweep file, and ``${sweep_params:NAME}`` turns its parameters into Hydra
sweeper parameters, so ``python src/train.py -m sweep=NAME`` and ``wandb sweep sweeps/NAME.yaml`` run the
same grid. At the end of a multirun the report of :mod:`addernet.experiments.report` (a table with one row per
setting, and plots) is written into the sweep dir and its table printed; it is built from the files each job
writes, so it works with any Hydra launcher.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from addernet.experiments.report import write_report

def load_sweep(path: Path) -> dict[str, list]:
    """The parameters of a W&B sweep file as {override key: list of values}."""
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"no sweep file {path}; known sweeps: {', '.join(known)}")
    spec = yaml.safe_load(path.read_text())
    params = {}
    for key, options in spec.get("parameters", {}).items():
        if "values" in options:
            params[key] = list(options["values"])
        elif "value" in options:
            params[key] = [options["value"]]
        else:
            raise ValueError(f"{path}: parameter {key!r} needs 'values' or 'value' (grid sweeps only)")
    return params


def register_sweep_resolver(sweeps_dir: Path) -> None:
    """``${sweep_params:NAME}`` -> Hydra sweeper params ({key: "v1,v2,..."}) of ``sweeps_dir/NAME.yaml``."""
    def sweep_params(name: str) -> dict[str, str]:
        params = load_sweep(sweeps_dir / f"{name}.yaml")
        return {key: ",".join(str(v) for v in values) for key, values in params.items()}

    if not OmegaConf.has_resolver("sweep_params"):
        OmegaConf.register_new_resolver("sweep_params", sweep_params)


class ResultsTable(Callback):
    """Hydra callback: at the end of a multirun, write the report of its jobs and print its table."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not any(sweep_dir.glob("*/.hydra/overrides.yaml")):
            return
        table = write_report([sweep_dir])
        print(f"\nResults ({sweep_dir / 'report.md'}):\n{table}")
