"""`omicsweep datasets list | register | unregister | show | synth`: built-in and stored datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from omicsweep.cli.common import Overwrite, console, err_console, user_errors

datasets_app = typer.Typer(no_args_is_help=True, help="Built-in and stored datasets.")


@datasets_app.command("list")
@user_errors
def datasets_list() -> None:
    """List the built-in datasets and the stores registered with `datasets register`."""
    from omicsweep.datasets import open_store, registered_datasets
    from omicsweep.datasets.builtin import BUILTIN
    from omicsweep.errors import InputError

    for spec in BUILTIN.values():
        console.print(f"[bold]{spec.name}[/]  built-in  {spec.description}", highlight=False)
    for name, path in registered_datasets().items():
        try:
            what = open_store(path).describe()
        except InputError:
            what = "store missing or unreadable"
        console.print(f"[bold]{name}[/]  registered  {path}  ({what})", highlight=False)


@datasets_app.command("register")
@user_errors
def datasets_register(
    name: str = typer.Argument(..., help="short name to use with --dataset"),
    store: str = typer.Argument(..., help="a store written by `omicsweep ingest` (path or URL)"),
    overwrite: bool = typer.Option(False, help="replace an existing registration of NAME"),
) -> None:
    """Give a store a name usable as `--dataset NAME` (recorded in the cache folder's datasets.json)."""
    from omicsweep.datasets import register_dataset
    from omicsweep.datasets.registered import registry_path

    path = register_dataset(name, store, overwrite=overwrite)
    console.print(f"registered {name} -> {path} (in {registry_path()})", highlight=False)


@datasets_app.command("unregister")
@user_errors
def datasets_unregister(name: str = typer.Argument(..., help="a registered dataset name")) -> None:
    """Forget a registered name (the store itself is kept)."""
    from omicsweep.datasets.registered import unregister_dataset

    console.print(f"unregistered {name} (was {unregister_dataset(name)})", highlight=False)


@datasets_app.command("show")
@user_errors
def datasets_show(name: str = typer.Argument(..., help="built-in name, registered name or store path")) -> None:
    """Shape, classes, splits, fingerprint and provenance of a dataset."""
    from omicsweep.datasets import open_store, resolve_dataset

    _, path = resolve_dataset(name)
    console.print_json(data=open_store(path).summary())


@datasets_app.command("synth")
@user_errors
def datasets_synth(
    out: Path = typer.Option(..., "--out", help="zarr store to write"),
    cells: int = typer.Option(1_000_000, min=10, help="number of cells"),
    genes: int = typer.Option(20_000, min=200, help="number of genes"),
    nnz: int = typer.Option(1000, min=1, help="non-zero genes per cell (about)"),
    types: int = typer.Option(20, min=2, help="number of cell types"),
    seed: int = typer.Option(0, help="generator seed"),
    overwrite: Overwrite = False,
    vocab: Optional[Path] = typer.Option(None, "--vocab", help="a pretraining corpus on this gene vocabulary "
                                         "(one symbol a line; sets --genes), split 95% train / 5% val"),
    label_sorted: bool = typer.Option(False, "--label-sorted", help="rows sorted by type within each split (as "
                                      "real stores grouped by sample or type)"),
    layout: Optional[str] = typer.Option(None, "--layout", help="X on disk: zstd, lz4, uint16 or legacy "
                                         "(the first writer's chunks); comma-separated"),
) -> None:
    """Write a synthetic count corpus with cell-type structure, chunk by chunk (memory bounded)."""
    from rich.progress import Progress

    from omicsweep.datasets import Store
    from omicsweep.datasets.store_layout import parse_layout
    from omicsweep.datasets.synth import write_synthetic

    store_layout = parse_layout(layout)
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task(f"writing {out}", total=cells)
        write_synthetic(out, cells=cells, genes=genes, nnz_per_cell=nnz, n_types=types, seed=seed,
                        overwrite=overwrite, progress=lambda done: progress.update(task, completed=done), vocab=vocab,
                        label_sorted=label_sorted, layout=store_layout,
                        **({"fractions": (0.95, 0.05, 0.0)} if vocab is not None else {}))
    summary = Store(out).summary()
    console.print(f"wrote {out}: {summary['cells']} cells x {summary['genes']} genes, {len(summary['classes'])} types, "
                  f"{summary['fingerprint']}", highlight=False)

