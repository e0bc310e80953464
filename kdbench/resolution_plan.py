"""`kdbench reproduce --resolution`: after the main plan, the students of the registry's
teacher-free method and of Table 3's three best distillers (by mean test accuracy, as the
compression plan picks them) at :data:`SIDES` px from the data-size teacher (``student.size``),
for the request's seeds, then the resolution table."""

from __future__ import annotations

import logging
from dataclasses import replace

from kdbench.plan import Plan
from kdbench.summary import RunSummary

log = logging.getLogger(__name__)
SIDES = (32, 48)  # below the cpu preset's 64 px; a side at or above data.size is skipped


def resolution_plans(p: Plan) -> list[Plan]:
    """One plan per side of :data:`SIDES` below the data's size (the main plan ``p`` resolved:
    its teacher, students and seeds)."""
    from kdbench.compress.plan import best_distillers
    from kdbench.compress.settings import teacher_free
    from kdbench.plan import plan
    from kdbench.report.listing import collect_runs

    r = p.request
    plain = teacher_free(p.registry)
    listing = collect_runs(r.results, p.registry)
    listing = listing[(listing["dataset"] == r.dataset) & listing["student"].isin(r.students)]
    best = best_distillers(listing, plain)
    methods = (plain, *dict.fromkeys(m for m, _ in best))
    modes = tuple(dict.fromkeys(mode for _, mode in best)) or ("rgb",)
    log.info("resolution plan: %s at %s px", ", ".join(f"{m} {mo}" for m, mo in best) or plain,
             ", ".join(map(str, SIDES)))
    size = int(p.config["data"]["size"])
    out = []
    for side in (s for s in SIDES if s < size):
        sub = plan(replace(r, methods=methods, modes=modes, with_reports=False,
                           cross_dataset="none", compression=False, resolution=False,
                           settings=(*r.settings, f"student.size={side}"), command=None))
        keep = set(best) | {(plain, "none")}
        sub.runs = [x for x in sub.runs if not x.spec.variant
                    and (x.spec.method, x.spec.mode) in keep]
        out.append(sub)
    return out


def write_resolution(p: Plan) -> RunSummary | None:
    """Execute the resolution plans and write ``tables/resolution.md`` once all finished."""
    from kdbench import reporting
    from kdbench.files import atomic_write_text
    from kdbench.running import _waited, execute

    total = None
    for sub in resolution_plans(p):
        summary = execute(sub)
        total = summary if total is None else total.merged(summary)
        if not _waited(sub.request, summary):
            return total
    atomic_write_text(p.request.results / "tables" / "resolution.md",
                      reporting.report("resolution", results=p.request.results,
                                       dataset=p.request.dataset).markdown())
    return total
