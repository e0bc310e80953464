"""A plan as jobs: one `kdbench run ... --only <run>` command per planned run, teacher first.

Every launcher (print, local, slurm) runs these commands, so the run folders, locks and resume
are the ones of a plain `kdbench run`, and the store is the same whichever launcher made it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

TEACHER = "teacher"  # the --only name of the plan's teacher


@dataclass
class RunArgs:
    """The arguments of `kdbench run` that decide the plan and where it goes."""

    methods: list[str]
    dataset: str
    data_root: str | None
    students: list[str] | None
    modes: list[str]
    seeds: list[int]
    preset: str
    results: str
    registry: list[str] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)
    device: str | None = None
    keep_checkpoints: str = "all"
    with_reports: bool = False
    cross_dataset: str | None = None
    cross_data_root: str | None = None

    def argv(self) -> list[str]:
        """``kdbench run`` arguments that plan the same runs (without ``--only``)."""
        out = ["run", "--methods", ",".join(self.methods), "--dataset", self.dataset,
               "--modes", ",".join(self.modes), "--seeds", ",".join(map(str, self.seeds)),
               "--preset", self.preset, "--results", self.results]
        if self.data_root is not None:
            out += ["--data-root", self.data_root]
        if self.students:
            out += ["--students", ",".join(self.students)]
        for path in self.registry:
            out += ["--registry", path]
        for item in self.settings:
            out += ["--set", item]
        for item in self.sweeps:
            out += ["--sweep", item]
        if self.device is not None:
            out += ["--device", self.device]
        if self.keep_checkpoints != "all":
            out += ["--keep-checkpoints", self.keep_checkpoints]
        if self.with_reports:
            out.append("--with-reports")
        if self.cross_dataset is not None:
            out += ["--cross-dataset", self.cross_dataset]
        if self.cross_data_root is not None:
            out += ["--cross-data-root", self.cross_data_root]
        return out


@dataclass
class Job:
    """One command of a plan: the teacher, or one student run (``run_dir`` its folder)."""

    name: str
    argv: list[str]  # kdbench's arguments
    run_dir: Path | None = None  # None for the teacher
    needs_teacher: bool = False

    def shell(self, program: str = "kdbench") -> str:
        """The command line, quoted for a POSIX shell."""
        return shlex.join([program, *self.argv])


def plan_jobs(args: RunArgs, runs: list[tuple[str, Path, bool]]) -> list[Job]:
    """The teacher's job (if a run distils) then one job per ``(name, run_dir, distils)``."""
    base = args.argv()
    jobs = [Job(name, [*base, "--only", name], run_dir, distils) for name, run_dir, distils in runs]
    if any(j.needs_teacher for j in jobs):
        jobs.insert(0, Job(TEACHER, [*base, "--only", TEACHER]))
    return jobs


def split_todo(jobs: list[Job]) -> tuple[int, list[Job], list[Job]]:
    """(finished runs, the teacher's job if an unfinished run distils, the unfinished runs)."""
    from kdbench.train.runner import is_finished

    finished = [j for j in jobs if j.run_dir is not None and is_finished(j.run_dir)]
    students = [j for j in jobs if j.name != TEACHER and j not in finished]
    teacher = [j for j in jobs if j.name == TEACHER] if any(
        j.needs_teacher for j in students) else []
    return len(finished), teacher, students
