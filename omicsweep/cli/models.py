"""`omicsweep models`: the registered models, found through the registry."""

from __future__ import annotations

from omicsweep.cli.common import console


def list_models() -> None:
    """List the registered models."""
    from rich.table import Table

    from omicsweep.models import available_models, get_model

    table = Table(title="Registered models")
    for column in ("name", "family", "role", "tasks", "description"):
        table.add_column(column)
    for name in available_models():
        entry = get_model(name)
        table.add_row(entry.name, entry.family, entry.role, ", ".join(entry.tasks), entry.description)
    console.print(table)


COMMANDS = {"models": list_models}
