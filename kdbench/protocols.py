"""`kdbench reproduce --protocol logo|one-to-all`: one run plan per training set of generators,
then the generator table (and with ``--compression``, each protocol's teacher-free runs pruned
to 90 %, so the table measures what compression costs on unseen generators).

- ``logo``: leave one generator out: for each generator of the training split, train on the
  others (every test generator is tested; the one left out is out of distribution).
- ``one-to-all``: train on one source generator (:data:`SOURCE`, or ``--train-generators``) and
  test on all (ForenSynths' ProGAN -> its 13, GenImage's SD v1.4 -> its 8).

Each plan trains the registry's teacher-free method and each method whose registry ``reports``
declare ``generators: {mode}`` (in that mode, at its registry settings: no variants), for the
request's students and seeds.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from kdbench.errors import KdbenchError
from kdbench.request import RunRequest
from kdbench.summary import RunSummary

log = logging.getLogger(__name__)
# the source generator of one-to-all per dataset (the published protocols; synthetic_gen's
# up-sampling generator stands in for ProGAN)
SOURCE = {"forensynths": "progan", "genimage": "sd-v1.4", "synthetic_gen": "nearest-up"}
PRUNED = (("structured", 0.9), ("unstructured", 0.9))  # --compression: each protocol run's
FINETUNE_EPOCHS = 2  # as the compression plan's


def protocol_methods(registry: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(methods, modes) a protocol plan trains: the teacher-free method and the methods whose
    registry ``reports`` declare ``generators: {mode}``."""
    from kdbench.compress.settings import teacher_free

    methods, modes = [teacher_free(registry)], []
    for name, entry in registry.items():
        spec = entry.reports.get("generators")
        if spec:
            methods.append(name)
            modes.append(spec["mode"])
    return tuple(methods), tuple(dict.fromkeys(modes)) or ("rgb",)


def training_sets(request: RunRequest, data_root: Path | None, config: dict) -> list[tuple]:
    """The generators each plan trains on (sorted tuples), from the dataset's training split."""
    from kdbench.data.datasets import open_configured
    from kdbench.data.generators import fake_generators

    data = open_configured(request.dataset, data_root, {**config["data"],
                                                       "train_generators": "",
                                                       "test_generators": ""},
                           progress=request.progress)
    have = sorted(set(fake_generators(data.index, "train")) | set(fake_generators(data.index,
                                                                                  "val")))
    if request.protocol == "logo":
        if request.train_generators:
            raise KdbenchError("--protocol logo leaves out each generator of the training "
                               "split in turn; drop --train-generators (or use one-to-all)")
        if len(have) < 2:
            raise KdbenchError(f"--protocol logo needs two or more generators in the training "
                               f"split; {request.dataset} has {', '.join(have) or 'none'}")
        return [tuple(g for g in have if g != out) for out in have]
    source = tuple(request.train_generators) or ((SOURCE[request.dataset],)
                                                 if request.dataset in SOURCE else ())
    if not source:
        raise KdbenchError(f"--protocol one-to-all: {request.dataset} has no default source "
                           f"generator; name it with --train-generators (one of "
                           f"{', '.join(have)})")
    return [tuple(sorted(source))]


def reproduce_protocol(request: RunRequest) -> tuple[RunSummary, str | None, bool]:
    """Every plan of ``request.protocol`` (see the module doc), then the generator table in
    ``<results>/tables/generators.md``; returns the summary of all the plans' runs, the device
    and whether every run finished here (the table is written only then)."""
    from kdbench import reporting
    from kdbench.files import atomic_write_text
    from kdbench.plan import plan
    from kdbench.registry import load_registry
    from kdbench.running import _waited, execute

    reg = load_registry(list(request.registry))
    if request.compression:  # before hours of training
        from kdbench.compress.structured import require_torch_pruning

        require_torch_pruning()
    methods, modes = protocol_methods(reg)
    base = replace(request, protocol=None, methods=methods, modes=modes, with_reports=False,
                   cross_dataset="none", compression=False, train_generators=(), command=None)
    first = plan(base)
    sets = training_sets(request, request.data_root, first.config)
    log.info(f"protocol {request.protocol} on {request.dataset}: {len(sets)} training "
             f"set(s): " + "; ".join("+".join(s) for s in sets))
    total: RunSummary | None = None
    parents, complete = [], True
    for train in sets:  # every plan is executed (or submitted) even when one falls short
        p = plan(replace(base, train_generators=train))
        p.runs = [r for r in p.runs if not r.spec.variant]  # the registry's variants: not here
        summary = execute(p)
        total = summary if total is None else total.merged(summary)
        parents += [r.run_dir for r in p.runs if r.spec.mode == "none"]
        complete = complete and p.request.launcher != "print" and _waited(p.request, summary)
    assert total is not None
    if not complete:
        return total, first.request.device, False
    if request.compression:
        _compress(parents, request)
    atomic_write_text(request.results / "tables" / "generators.md",
                      reporting.report("generators", results=request.results,
                                       dataset=request.dataset).markdown())
    return total, first.request.device, True


def _compress(parents: list[Path], request: RunRequest) -> None:
    from kdbench.compress.api import compress

    for parent in parents:
        for prune, target in PRUNED:
            compress(parent, prune=prune, target=target, finetune=FINETUNE_EPOCHS,
                     data_root=request.data_root, device=request.device,
                     threads=request.threads, progress=request.progress,
                     registry=list(request.registry))
