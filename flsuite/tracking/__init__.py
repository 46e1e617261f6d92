"""Experiment tracking of ``flsuite run``: each study as a run in MLflow (``tracking=mlflow``).

MLflow is an optional extra (``pip install 'flsuite[mlflow]'``) imported only when a study
is tracked. ``StudyTracking.prepare`` checks every store before the first study trains;
``track(index)`` wraps one study.
"""

from flsuite.tracking.mlflow_tracking import INSTALL, MlflowTracking, default_uri, registered_model_name, version_tags
from flsuite.tracking.session import StudyTracking, TrackedRun

__all__ = ["INSTALL", "MlflowTracking", "StudyTracking", "TrackedRun", "default_uri", "registered_model_name", "version_tags"]
