"""Orchestration: MLflow tracking, the ``run`` job, Ray Train / actors / Tune, Ray Jobs."""
