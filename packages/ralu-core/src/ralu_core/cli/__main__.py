"""``python -m ralu_core.cli`` runs the ``ralu`` command (as launchers such as torchrun do)."""

from ralu_core.cli import main

raise SystemExit(main())
