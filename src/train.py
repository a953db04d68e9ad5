"""Train a model: ``python src/train.py model=adder_resnet20 data=cifar10 [overrides]`` (``-m`` for sweeps)."""

from pathlib import Path

import dotenv
import hydra
from omegaconf import DictConfig

from addernet.experiments.sweep import register_sweep_resolver
from addernet.experiments.config_schema import register_schemas
from addernet.experiments.jobs import run_entry_point, run_job
from addernet.experiments.run import train

dotenv.load_dotenv()  # DATA_DIR, WANDB_* from .env
register_schemas()  # the keys and types each config may hold
register_sweep_resolver(Path(__file__).resolve().parents[1] / "sweeps")  # sweep=NAME reads sweeps/NAME.yaml


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return run_job(cfg, train).get("val/acc_best", float("nan"))


if __name__ == "__main__":
    run_entry_point(main)
