"""Prometheus metrics of the online path, through Ray Serve's metrics API (exported by every Ray node).

Created inside each replica (Serve adds deployment/replica tags); names are exported with Ray's `ray_` prefix.
"""

from __future__ import annotations

from collections import Counter as Tally

from ray.serve.metrics import Counter, Gauge, Histogram

_LATENCY_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
_BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128]


class ServeMetrics:
    """Per-stage latency, items indexed, rejections by reason, batch sizes seen and uploads in flight."""

    def __init__(self) -> None:
        self.stage_ms = Histogram(
            "reelvec_stage_latency_ms",
            description="Wall time of one pipeline stage (decode, asr, clip, text, fuse, index, total, search).",
            boundaries=_LATENCY_MS,
            tag_keys=("stage",),
        )
        self.indexed = Counter(
            "reelvec_items_indexed",
            description="Items written to the index, by outcome (created / replaced).",
            tag_keys=("outcome",),
        )
        self.rejected = Counter(
            "reelvec_rejections",
            description="Requests refused, by reason code (too_large, not_a_video, unauthorized, ...).",
            tag_keys=("reason",),
        )
        self.batch_size = Histogram(
            "reelvec_batch_size",
            description="Requests per @serve.batch call actually seen, by batched method.",
            boundaries=_BATCH_SIZES,
            tag_keys=("method",),
        )
        self.inflight = Gauge("reelvec_uploads_in_flight", description="Uploads being processed by this ingress.")
        self.index_items = Gauge("reelvec_index_items", description="Points in the index after the last write.")
        # Also kept in-process so the benchmark can read the batch sizes seen without a Prometheus scrape.
        self.batch_sizes_seen: dict[str, Tally[int]] = {}

    def stage(self, stage: str, ms: float) -> None:
        self.stage_ms.observe(ms, tags={"stage": stage})

    def batch(self, method: str, size: int) -> None:
        self.batch_size.observe(size, tags={"method": method})
        self.batch_sizes_seen.setdefault(method, Tally())[size] += 1

    def reject(self, reason: str) -> None:
        self.rejected.inc(tags={"reason": reason})
