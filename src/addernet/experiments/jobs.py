"""What every entry point's job shares: one-line errors, the sweep's failure record, the metrics file, threads
and the device check."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from addernet.errors import ConfigError, UserError, first_line
from addernet.system import configure_threads

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # each run's final numbers, read by the sweep's results table
FAILURE_FILE = "failed.json"  # a job of a sweep that raised: its error, for the report


def user_error_in(err: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``err``, also when Hydra's ``instantiate`` wrapped it; else None."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, UserError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


FULL_ERROR = "HYDRA_FULL_ERROR"  # Hydra's switch: raise errors with their traceback instead of printing them
_entry_point: dict = {"user_full_error": None, "in_job": False}


def run_entry_point(main: Callable[[], object]) -> None:
    """Call a ``@hydra.main`` function. A config Hydra cannot compose (a misspelt key or group choice, a value of
    the wrong type, a malformed override) is one ``error:`` line and exit status 2, like every other mistake;
    Hydra itself prints several lines and exits with 1. For that, Hydra is told to raise (its documented
    ``HYDRA_FULL_ERROR=1``) while it composes; each job runs under the user's own setting."""
    _entry_point["user_full_error"] = os.environ.get(FULL_ERROR)
    if _entry_point["user_full_error"] == "1":
        main()
        return
    os.environ[FULL_ERROR] = "1"
    try:
        main()
    except Exception as err:
        if _entry_point["in_job"]:  # a job's own error, raised under the user's setting: not composing
            raise
        print(f"error: {composition_error(err)}", file=sys.stderr)
        raise SystemExit(2) from None


def composition_error(err: BaseException) -> str:
    """One line from Hydra's message: what is wrong, the OmegaConf error behind it, and the choices of a group."""
    if isinstance(err, MissingConfigException) and err.options:
        return f"{first_line(err).split(': ', 1)[-1]}: choose one of {', '.join(err.options)}"
    if not isinstance(err, (HydraException, OmegaConfBaseException)):
        return f"the config cannot be composed: {type(err).__name__}: {first_line(err)}"
    hints = [line.strip() for line in str(err).splitlines()[1:]  # Hydra's hints, not OmegaConf's key dump
             if line.strip() and not line.startswith(("To append", "    "))]
    cause = f": {first_line(err.__cause__)}" if err.__cause__ is not None else ""
    return " ".join([first_line(err).rstrip(".") + cause, *hints]) + (
        " (`--cfg job` prints every setting)" if cause else "")


@contextmanager
def user_error_setting():
    """While a job runs: the user's own ``HYDRA_FULL_ERROR`` (processes the job starts inherit it). A job that
    raises leaves it so, for Hydra's own report of the error; one that returns hands the composing back."""
    composing = os.environ.get(FULL_ERROR)
    if _entry_point["user_full_error"] is None:
        os.environ.pop(FULL_ERROR, None)
    else:
        os.environ[FULL_ERROR] = _entry_point["user_full_error"]
    _entry_point["in_job"] = True
    yield
    _entry_point["in_job"] = False  # a sweep composes its next job now
    if composing is not None:
        os.environ[FULL_ERROR] = composing


def run_job(cfg: DictConfig, task) -> dict[str, float]:
    """Run ``task(cfg)``. A user's mistake is one line on stderr and exit status 2 (``HYDRA_FULL_ERROR=1`` shows the
    traceback); in a multirun a job that raises is recorded as failed and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from addernet.experiments.config_schema import check_keys  # (Lightning, data modules: not for the report)

    with user_error_setting():
        try:
            check_keys(cfg)
            return task(cfg)
        except Exception as err:
            if HydraConfig.get().mode != RunMode.MULTIRUN:
                user_error = user_error_in(err)
                if user_error is not None and os.environ.get(FULL_ERROR) != "1":
                    print(f"error: {user_error}", file=sys.stderr)
                    raise SystemExit(2) from None
                _entry_point["job_error"] = err
                raise
            if type(err).__module__.startswith("submitit"):  # submitit's own ending (out of requeues)
                raise
            log.exception("job failed; the sweep goes on")
            path = Path(cfg.paths.output_dir) / FAILURE_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}, indent=2))
            return {}


def numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor)) and
            (not isinstance(v, torch.Tensor) or v.numel() == 1)}


def write_metrics(path: Path, metrics: dict[str, float]) -> None:
    """``metrics.json`` with the headline numbers first: test, val, train, timing, then per-layer statistics."""
    def rank(key: str) -> tuple[int, str]:
        order = ("test/", "val/", "train/", "fit_seconds", "epochs", "perf/")
        return next((i for i, p in enumerate(order) if key.startswith(p)), len(order)), key

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: metrics[k] for k in sorted(metrics, key=rank)}, indent=2))


def use_threads(cfg: DictConfig) -> None:
    """``threads=`` for this process; a CPU job of several processes (ddp on the CPU) shares the cores."""
    trainer = cfg.get("trainer") or {}
    devices = trainer.get("devices", 1)
    processes = devices if trainer.get("accelerator") == "cpu" and isinstance(devices, int) else 1
    threads = configure_threads(cfg.get("threads", "auto"), processes)
    log.info(f"{threads} CPU thread{'s' * (threads > 1)} per process (threads=N to change)")


def check_device(cfg: DictConfig) -> None:
    """An accelerator asked for by name must be there: say so before Lightning fails with a bare message."""
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator") or "auto")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator}, but PyTorch sees no CUDA GPU: use "
                          f"trainer=cpu, or trainer=default to take a GPU only where there is one")
    if accelerator == "tpu" and importlib.util.find_spec("torch_xla") is None:
        raise ConfigError("trainer=tpu needs torch_xla (a TPU machine); use trainer=default or trainer=cpu here")
