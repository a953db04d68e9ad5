"""Export a trained adder network: ``python src/export.py ckpt_path=PATH quantize=int8 [out=FILE]``.

Calibrates one 8-bit quantisation per adder layer on training images, folds BatchNorm, reports the float and
the int8 test accuracy side by side, and writes one self-contained file (see README, "Adder networks on a CPU").
"""

import dotenv
import hydra
from omegaconf import DictConfig

from addernet.experiments.deploy import export
from addernet.experiments.config_schema import register_schemas
from addernet.experiments.jobs import run_entry_point, run_job

dotenv.load_dotenv()
register_schemas()  # the keys and types each config may hold


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    run_job(cfg, export)


if __name__ == "__main__":
    run_entry_point(main)
