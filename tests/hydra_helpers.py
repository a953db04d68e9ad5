"""Composing the project's configs in tests, and running its entry points as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from addernet.experiments.config_schema import register_schemas
from addernet.experiments.sweep import register_sweep_resolver

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
register_sweep_resolver(ROOT / "sweeps")
register_schemas()


def compose_config(overrides: list[str], output_dir: Path | None = None, name: str = "train") -> DictConfig:
    """The config ``src/<name>.py`` would see for these overrides (with ``${hydra:...}`` resolvable)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        extra = [f"paths.output_dir={output_dir}"] if output_dir else []
        cfg = compose(name, overrides=overrides + extra, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run: the task sees its config, Hydra's own is in HydraConfig
    return cfg


def run_script(script: str, *args: str, cwd: Path, timeout: int = 600, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    """Run ``src/<script>`` in a subprocess with ``cwd`` as working directory (logs and data go there), in this
    process's environment or ``env``."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline",
           "LOG_DIR": str(cwd / "logs")}
    return subprocess.run([sys.executable, str(ROOT / "src" / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
