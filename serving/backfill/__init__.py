"""Batch backfill over a manifest on Ray Data (see `job.run_backfill`)."""

from serving.backfill.job import run_backfill
from serving.backfill.report import BackfillReport

__all__ = ["BackfillReport", "run_backfill"]
