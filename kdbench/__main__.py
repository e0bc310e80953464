"""``python -m kdbench``: the `kdbench` command (as torchrun and the local launcher start it)."""

from kdbench.cli import main

raise SystemExit(main())
