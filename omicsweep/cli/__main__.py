"""`python -m omicsweep.cli`: the same command line as the `omicsweep` script."""

from omicsweep.cli import app

app()
