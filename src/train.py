"""Train a model: ``python src/train.py model=adder_resnet20 data=cifar10 [overrides]`` (``-m`` for sweeps)."""

import dotenv
import hydra
from omegaconf import DictConfig

from addernet.training import train

dotenv.load_dotenv()  # DATA_DIR, WANDB_* from .env


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    return train(cfg).get("val/acc_best", float("nan"))


if __name__ == "__main__":
    main()
