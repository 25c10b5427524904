"""Calibration statistics: the file format (:mod:`.stats_file`); the offline procedure is
:mod:`.procedure` (``triattention_sampler.calibrate``), which needs the cache and so is not imported here."""
from .stats_file import CalibrationStats, as_calibration, model_metadata

__all__ = ["CalibrationStats", "as_calibration", "model_metadata"]
