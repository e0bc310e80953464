"""The embedded datasets: two domains of one generator, each generated on first use.

* ``synthetic``: the default :class:`SynthConfig` (FF++ c40-like; train, val and test).
* ``synthetic_c23``: a shifted domain for cross-dataset tests (Table 7): other identities,
  scenes and fakes (another seed), lighter compression (constant QP 23, FF++ "c23"), and a
  Deepfakes variant that training on ``synthetic`` never sees: its decoder up-samples by 2
  instead of 3, so its checkerboard has period 2. The other trace strengths are unchanged.
"""

from __future__ import annotations

from dataclasses import replace

from kdbench.data.synthetic.manipulations import Traces
from kdbench.data.synthetic.tree import SynthConfig

EMBEDDED: dict[str, SynthConfig] = {
    "synthetic": SynthConfig(),
    "synthetic_c23": SynthConfig(seed=23, qp=23, traces=replace(Traces(), deepfakes_lowres=2)),
}
# the cross dataset `kdbench reproduce` tests on when none is given
DEFAULT_CROSS = {"synthetic": "synthetic_c23"}
