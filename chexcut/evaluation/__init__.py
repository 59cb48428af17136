"""Evaluation: metrics (pure arrays), paired tests, the evaluation JSON, predictions, evaluation sets, inference, orchestration."""
