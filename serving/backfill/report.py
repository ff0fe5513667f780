"""What a backfill run did: counts, failures by stage/reason, throughput, per-stage time, version and alias."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from embedder.relations import RELATION_KINDS

# `--swap-alias` ran within --max-failures but the quality gate refused the swap: automation must tell this apart
# from "swapped" (0) and from "too many failures" (1).
EXIT_GATE_REFUSED = 5


@dataclass
class BackfillReport:
    """What a run did: counts, failures by stage/reason, throughput, per-stage time, version and alias."""

    manifest: str
    version: str
    schema_version: str
    total: int
    written: int = 0
    skipped: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # "stage/reason" -> count
    max_failures: int = 0
    ledger: str = ""
    wall_s: float = 0.0
    optimize_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)  # summed per-item seconds (stages overlap)
    index_count: int | None = None
    alias_version: str | None = None
    swapped: bool = False
    unavailable_models: list[str] = field(default_factory=list)
    relations: dict[str, Any] = field(default_factory=dict)  # item id -> relation (kind, of, scores, segments)
    gate: dict[str, Any] | None = None  # the quality gate's decision on --swap-alias (serving.evaluation)

    @property
    def items_per_s(self) -> float:
        """Items embedded and written per second of wall time (skipped rows excluded)."""
        return self.written / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def hints(self) -> list[str]:
        """What the operator can do about the failures (shown in the summary and `--json`)."""
        out = []
        if self.failures.get("manifest/forbidden_path"):
            out.append(
                "rows whose uri lies outside the allowed roots were refused: allow a folder with "
                "backfill.allowed_roots (REELVEC__BACKFILL__ALLOWED_ROOTS) or --allow-root DIR"
            )
        return out

    @property
    def gate_refused(self) -> bool:
        return self.gate is not None and not self.gate.get("swap")

    @property
    def exit_code(self) -> int:
        """1 over --max-failures, `EXIT_GATE_REFUSED` when the quality gate kept the alias, else 0."""
        if self.failed > self.max_failures:
            return 1
        return EXIT_GATE_REFUSED if self.gate_refused else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "version": self.version,
            "schema_version": self.schema_version,
            "total": self.total,
            "written": self.written,
            "skipped": self.skipped,
            "failed": self.failed,
            "failures": self.failures,
            "max_failures": self.max_failures,
            "ledger": self.ledger,
            "wall_s": round(self.wall_s, 3),
            "items_per_s": round(self.items_per_s, 3),
            "optimize_s": round(self.optimize_s, 3),
            "stage_s": {k: round(v, 3) for k, v in self.stage_s.items()},
            "index_count": self.index_count,
            "alias_version": self.alias_version,
            "swapped": self.swapped,
            "unavailable_models": self.unavailable_models,
            "relations": self.relations,
            "gate": self.gate,
            "hints": self.hints,
            "exit_code": self.exit_code,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackfillReport:
        """A report back from `to_json` (e.g. the last line of a submitted Ray Job's logs)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        ok = self.exit_code == 0
        refused = ""
        if self.gate_refused:
            refused = f"; alias NOT swapped, refused by the quality gate: {(self.gate or {}).get('reason', '')}"
        head = Text(
            f"backfill {'FAILED' if self.exit_code == 1 else 'done'}: {self.written} written, {self.skipped} skipped "
            f"(already indexed), {self.failed} failed of {self.total} rows in {self.wall_s:.1f} s "
            f"({self.items_per_s:.2f} items/s){refused}",
            style="bold green" if ok else "bold red",
        )
        info = Table.grid(padding=(0, 2))
        info.add_row("version", f"{self.version} (schema {self.schema_version})")
        alias = f"{self.alias_version}" + (" (swapped by this run)" if self.swapped else "")
        info.add_row("alias", alias)
        if self.gate is not None:
            info.add_row("quality gate", f"{'swap' if self.gate.get('swap') else 'REFUSED'}: {self.gate['reason']}")
        for kind in RELATION_KINDS:
            found = [f"{i} → {r['of']}" for i, r in self.relations.items() if r["kind"] == kind]
            if found:
                info.add_row(kind, ", ".join(found))
        info.add_row("index count", str(self.index_count))
        if self.failed:
            info.add_row("ledger", f"{self.ledger} (max failures {self.max_failures})")
        if self.unavailable_models:
            info.add_row("modality off", ", ".join(self.unavailable_models))
        stages = Table("stage", "total s", "ms/item", title="per-stage time (summed over items; stages overlap)")
        n = max(self.written, 1)
        for k, v in self.stage_s.items():
            stages.add_row(k.removesuffix("_ms"), f"{v:.2f}", f"{v * 1000 / n:.1f}")
        stages.add_row("optimize", f"{self.optimize_s:.2f}", "-")
        parts: list[Any] = [head, info, stages, *(Text(f"hint: {h}", style="yellow") for h in self.hints)]
        if self.failures:
            ft = Table("stage/reason", "count", title="failures")
            for k, v in sorted(self.failures.items(), key=lambda kv: -kv[1]):
                ft.add_row(k, str(v))
            parts.append(ft)
        return Group(*parts)
