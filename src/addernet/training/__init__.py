"""Training: the LightningModule (``classifier``), the adaptive learning rate (``adalr``), distillation, the
callbacks, the run's reliability (atomic checkpoints, signals, non-finite guards), BatchNorm recalibration and
the learning-rate schedules."""
