"""The `omicsweep` command line: parses options into a plan or a command, nothing else.

One module per command group: data (ingest, ingest-pairs), datasets, corpus (corpus build, gene2vec), sweep
(sweep, train), results (leaderboard, reproduce, predict, export, report), explain, models. The options they share are
declared once in `common`. User errors print one line and exit 2; nothing half-written is left behind.
"""

from __future__ import annotations

import typer

from omicsweep.cli import corpus, data, explain, models, pretrain, results, sweep
from omicsweep.cli.corpus import corpus_app
from omicsweep.cli.datasets import datasets_app

__all__ = ["app"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter sweeps and leaderboards for deep learning on gene expression.",
)
for group in (data, models, sweep, pretrain, results, explain, corpus):
    for name, command in group.COMMANDS.items():
        app.command(name)(command)
app.add_typer(datasets_app, name="datasets")
app.add_typer(corpus_app, name="corpus")
