"""Lightning's CSV logger, made to keep what a run already logged when the run resumes or its folder is reused."""

from __future__ import annotations

import csv
import os
import tempfile
import time
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _HistoryKeepingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv``; this one keeps what it holds (see below)."""

    def __init__(self, log_dir: str, resume_step: int | None):
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self.resume_step is None:  # a new run in a used directory: the old file stays, under another name
            path.rename(path.with_name(f"metrics.before-{time.strftime('%Y%m%d-%H%M%S')}.csv"))
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            # rows past the checkpoint are logged again by the resumed run
            rows = [r for r in reader if not r.get("step") or int(float(r["step"])) <= self.resume_step]
        fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".csv", dir=path.parent)
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self.metrics_keys = sorted(keys)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that nothing already logged is lost: a resumed run (``ckpt_path=``) appends
    to its ``metrics.csv`` after the checkpoint's step, and a new run in a directory that already has one
    renames the old file ``metrics.before-<time>.csv``."""

    resume_step: int | None = None

    def continue_from(self, step: int) -> None:
        """Resuming from a checkpoint taken at global step ``step``."""
        self.resume_step = step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryKeepingWriter(self.log_dir, self.resume_step)
        return self._experiment
