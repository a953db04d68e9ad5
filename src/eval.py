"""Evaluate a checkpoint: ``python src/eval.py ckpt_path=PATH data=cifar10`` (top-1, top-5, loss)."""

import dotenv
import hydra
from omegaconf import DictConfig

from addernet.experiments.evaluation import evaluate
from addernet.experiments.config_schema import register_schemas
from addernet.experiments.jobs import run_entry_point, run_job

dotenv.load_dotenv()
register_schemas()  # the keys and types each config may hold


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    for name, value in run_job(cfg, evaluate).items():
        print(f"{name}: {value:.4f}")


if __name__ == "__main__":
    run_entry_point(main)
