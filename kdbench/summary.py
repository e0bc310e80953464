"""What executing a plan did: the one result type of every executor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunSummary:
    """Runs trained, found finished, left to another process sharing the store, failed (with
    their log) or not started (the teacher failed); the run folders, the wall time, the job
    ids of a launcher that only submits, the store's disk use at the end, and the command
    lines of ``--launcher print``."""

    results: Path
    trained: int = 0
    finished_before: int = 0
    left_to_another_process: int = 0
    failed: list[tuple[str, Path | None]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    store_bytes: int | None = None
    commands: list[str] = field(default_factory=list)  # --launcher print: one per job
    teacher: Path | None = None  # the plan's teacher folder (None when no run distils)

    @property
    def ok(self) -> bool:
        """No run failed and none was left unstarted."""
        return not self.failed and not self.skipped

    def merged(self, other: RunSummary) -> RunSummary:
        """This summary and ``other``'s runs together (the later one's teacher, wall time and
        disk use)."""
        return RunSummary(
            self.results, self.trained + other.trained,
            self.finished_before + other.finished_before,
            self.left_to_another_process + other.left_to_another_process,
            self.failed + other.failed, self.skipped + other.skipped, self.runs + other.runs,
            self.job_ids + other.job_ids, self.wall_s + other.wall_s, other.store_bytes,
            self.commands + other.commands, other.teacher)

    def counts(self) -> dict[str, int]:
        """The counts by name (the reproduce log's fields)."""
        return {"trained": self.trained, "finished_before": self.finished_before,
                "left_to_another_process": self.left_to_another_process,
                "failed": len(self.failed)}


LaunchSummary = RunSummary  # the name kdbench 0.2 gave a launcher's summary


def disk_use(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 if it does not exist)."""
    total = 0
    for path in Path(folder).rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total
