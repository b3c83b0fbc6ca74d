"""The ``fedcore`` command line: ``main`` dispatches to one module per group of commands
(``admin``: keys, ledger, audit; ``query``: statistics; ``deploy``: nodes and certificates; ``init``: a
new app from a CSV; ``estimate``: HE costs)."""

from fedcore.cli.main import main

__all__ = ["main"]
