"""The `omicsweep` command line. User errors print one line and exit 2; nothing half-written is left behind."""

from __future__ import annotations

import functools
import os
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from omicsweep.errors import ConfigError, OmicsweepError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter sweeps and leaderboards for deep learning on gene expression.",
)
datasets_app = typer.Typer(no_args_is_help=True, help="Built-in and stored datasets.")
app.add_typer(datasets_app, name="datasets")
# a pipe or CI log gets a wide table instead of rich's 80-column default
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)

DEFAULT_OUT = Path("omicsweep-runs")


def user_errors(func: Callable) -> Callable:
    """Turn the project's own exceptions into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except OmicsweepError as exc:
            # escaped, no emoji: a message quotes user text ("hvg:100" is not :100:, "[x]" is not markup)
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, emoji=False)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper


def _parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ConfigError(f"--split {text!r}: expected three comma-separated numbers, e.g. 0.7,0.15,0.15") from None
    if len(parts) != 3:
        raise ConfigError(f"--split {text!r}: expected three comma-separated numbers, e.g. 0.7,0.15,0.15")
    return parts  # type: ignore[return-value]


@app.command()
@user_errors
def ingest(
    input: Path = typer.Argument(
        ...,
        help="expression input: .h5ad, AnnData .zarr folder, 10x mtx folder, 10x .h5, .loom, .csv/.tsv[.gz], "
        ".gct[.gz], .gctx, or a plain HDF5 matrix (X + label vectors)",
    ),
    label_col: str = typer.Option(
        ..., "--label-col",
        help="the labels: an obs column / table column or row / GCT column-metadata field / HDF5 vector; "
        "with --labels, the column of that file",
    ),
    out: str = typer.Option(
        ..., "--out", help="zarr store to write: STORE.zarr, or an fsspec URL (s3://bucket/STORE.zarr; uploaded "
        "when complete, root zarr.json last)",
    ),
    storage_options: Optional[str] = typer.Option(
        None, "--storage-options",
        help='URL --out: fsspec options as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\' '
        "(default: $OMICSWEEP_STORAGE_OPTIONS, then the filesystem's own environment)",
    ),
    input_format: Optional[str] = typer.Option(
        None, "--format",
        help="h5ad, zarr, 10x-mtx, 10x-h5, loom, csv, tsv, gct, gctx or hdf5 (default: detected from the path)",
    ),
    orient: str = typer.Option(
        "auto", "--orient", help="csv/tsv/hdf5: cells are the 'rows' or the 'columns' of the matrix; auto: from the labels",
    ),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="file of cell id + label, joined by cell id (--label-col names its column)",
    ),
    layer: Optional[str] = typer.Option(None, help="use this layer instead of X"),
    raw: bool = typer.Option(False, "--raw", help="use .raw.X instead of X"),
    split: str = typer.Option("0.7,0.15,0.15", help="train,val,test fractions (stratified, or by group)"),
    seed: int = typer.Option(0, help="seed of the split"),
    overwrite: bool = typer.Option(False, help="replace an existing store"),
    preprocess: Optional[str] = typer.Option(
        None, "--preprocess",
        help="recipes in order, comma-separated: normalize_log1p (counts: normalize_total 1e4 + log1p), hvg:N "
        "(N highly variable genes fitted on the training split), genes:FILE (keep the genes listed in FILE), "
        "scbert_tokens (scBERT's expression tokens 0..5)",
    ),
    drop_labels: Optional[str] = typer.Option(
        None, "--drop-labels", help="labels whose cells are dropped, comma-separated, case-insensitive (e.g. unknown,NA)",
    ),
    min_class_size: int = typer.Option(0, "--min-class-size", help="drop classes with fewer cells than this"),
    unique_genes: bool = typer.Option(
        False, "--unique-genes", help="rename duplicate gene names GENE-1, GENE-2, ... instead of refusing them",
    ),
    group_col: Optional[str] = typer.Option(
        None, "--group-col", help="column of groups (donor, batch) kept whole within one split or fold",
    ),
    folds: Optional[int] = typer.Option(
        None, "--folds", help="K-fold: record a fold id per cell; a trial's config `fold` picks the test fold",
    ),
    test_only: bool = typer.Option(False, "--test-only", help="every cell in the test split (an external test set)"),
) -> None:
    """Ingest an expression file into a chunked zarr store (atomic: a failure leaves nothing)."""
    from omicsweep.datasets import IngestOptions, Store, ingest_file
    from omicsweep.datasets.remote import as_location, parse_storage_options
    from omicsweep.datasets.splits import check_fractions

    fs_options = parse_storage_options(storage_options)
    target = as_location(out)  # a URL stays a string; a path becomes a Path

    fractions = check_fractions(_parse_fractions(split))
    options = IngestOptions(
        fractions=fractions, seed=seed, preprocess=preprocess, min_class_size=min_class_size,
        drop_labels=tuple(d for d in (drop_labels or "").split(",") if d.strip()), unique_genes=unique_genes,
        group_col=group_col, folds=folds, test_only=test_only,
    )
    messages: list[str] = []
    ingest_file(
        input, label_col=label_col, out=target, layer=layer, use_raw=raw, overwrite=overwrite, format=input_format,
        orient=orient, labels_file=labels, options=options, messages=messages, storage_options=fs_options,
    )
    for line in messages:
        console.print(line, highlight=False, soft_wrap=True, markup=False, emoji=False)
    summary = Store(target, storage_options=fs_options).summary()
    folds_text = f", folds {summary['folds']}" if "folds" in summary else ""
    console.print(
        f"wrote {out}: {summary['cells']} cells x {summary['genes']} genes, {len(summary['classes'])} classes, "
        f"splits {summary['splits']}{folds_text}, {summary['fingerprint']}"
    )


@app.command("ingest-pairs")
@user_errors
def ingest_pairs_command(
    pairs: Path = typer.Argument(
        ..., help="CNNC pair file (geneA<TAB>geneB<TAB>label, .txt[.xz|.gz]; its *_num.txt data parts beside it) "
        "or a GGIPNN folder ({train,valid,test}_text.txt + _label.txt, e.g. gene2vec's)",
    ),
    expression: str = typer.Option(
        ..., "--expression", help="expression store (from `omicsweep ingest`) or dataset name the images are drawn from",
    ),
    out: Path = typer.Option(..., "--out", help="pair-task store to write (a small zarr folder)"),
    parts: Optional[Path] = typer.Option(None, "--parts", help="CNNC data-part boundaries (default: PAIRS' *_num.txt)"),
    folds: int = typer.Option(3, "--folds", help="CNNC: folds of whole data parts (test fold: config `fold`, default 0)"),
    binary: bool = typer.Option(False, "--binary", help="CNNC: keep labels 0 and 1 (drop the reversed pairs, label 2)"),
    max_pairs: Optional[int] = typer.Option(None, "--max-pairs", help="keep a seeded random subset of this many pairs"),
    seed: int = typer.Option(0, help="seed of --max-pairs"),
    overwrite: bool = typer.Option(False, help="replace an existing store"),
) -> None:
    """Match a gene-pair label file to an expression store (symbols, case-insensitive) into a pair-task store.

    The images (CNNC's 2-D histograms) are built at trial start for the trial's `bins` and `sigma`."""
    from omicsweep.datasets import resolve_dataset
    from omicsweep.datasets.pairs import PairIngestOptions, ingest_pairs

    expression_name, expression_path = resolve_dataset(expression)
    options = PairIngestOptions(parts_file=parts, folds=folds, binary=binary, max_pairs=max_pairs, seed=seed,
                                overwrite=overwrite)
    store = ingest_pairs(pairs, expression=expression_path, out=out, options=options)
    summary = store.summary()
    c = summary["counts"]
    dropped = ", ".join(f"{c[k]} {what}" for k, what in (
        ("dropped_missing_gene", "with a gene missing from the expression data"),
        ("dropped_reversed", "reversed (--binary)"), ("dropped_subsample", "left out by --max-pairs")) if c.get(k))
    lines = [
        f"genes: {c['genes_found']} of {c['genes_in_pairs']} pair genes found in {expression_name} "
        f"({c['expression_genes']} genes x {c['expression_cells']} cells; symbols matched case-insensitively)",
        f"pairs: {c['pairs_kept']} of {c['pairs_read']} kept" + (f"; dropped {dropped}" if dropped else ""),
        "classes: " + ", ".join(f"{k} {v}" for k, v in summary["classes"].items()),
    ]
    for k, split in enumerate(summary.get("folds", [summary["splits"]])):
        lines.append(f"{'fold ' + str(k) if 'folds' in summary else 'given split'}: "
                     + ", ".join(f"{name} {n}" for name, n in split.items()))
    lines.append(f"wrote {out}: {summary['pairs']} pairs, {summary['task']}, {summary['fingerprint']}")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True, markup=False, emoji=False)


@app.command("models")
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
    overwrite: bool = typer.Option(False, help="replace an existing store"),
    vocab: Optional[Path] = typer.Option(None, "--vocab", help="a pretraining corpus on this gene vocabulary "
                                         "(one symbol a line; sets --genes), split 95% train / 5% val"),
) -> None:
    """Write a synthetic count corpus with cell-type structure, chunk by chunk (memory bounded)."""
    from rich.progress import Progress

    from omicsweep.datasets import Store
    from omicsweep.datasets.synth import write_synthetic

    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task(f"writing {out}", total=cells)
        write_synthetic(out, cells=cells, genes=genes, nnz_per_cell=nnz, n_types=types, seed=seed,
                        overwrite=overwrite, progress=lambda done: progress.update(task, completed=done), vocab=vocab,
                        **({"fractions": (0.95, 0.05, 0.0)} if vocab is not None else {}))
    summary = Store(out).summary()
    console.print(f"wrote {out}: {summary['cells']} cells x {summary['genes']} genes, {len(summary['classes'])} types, "
                  f"{summary['fingerprint']}", highlight=False)


class RichProgress:
    """Trials running/done/failed and the best value so far, updated by the sweep's callback."""

    def __init__(self, total: int, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err_console, transient=False,
        )
        self.label = label
        self.task = self.progress.add_task(label, total=total)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def update(self, tracker) -> None:
        done = tracker.finished + tracker.failed
        running = tracker.running
        best = "-" if tracker.best is None else f"{tracker.best:.3f}"
        self.progress.update(
            self.task, completed=done,
            description=f"{self.label}  running {running}  done {tracker.finished}  failed {tracker.failed}  best {best}",
        )


@app.command()
@user_errors
def sweep(
    dataset: str = typer.Option("pbmc68k", help="built-in or registered dataset name, or store path"),
    model: str = typer.Option("mlp", help="registered model name, comma-separated names, or 'all'"),
    trials: int = typer.Option(16, min=1, help="trials per model (models with nothing to search run one)"),
    concurrency: int = typer.Option(2, min=1, help="trials running at once"),
    seed: int = typer.Option(0, help="sweep seed: split, sampler and training seeds derive from it"),
    metric: Optional[str] = typer.Option(
        None, help="validation metric to maximise (default: the dataset's: accuracy for cells, balanced_accuracy "
        "for gene pairs)",
    ),
    space: Optional[Path] = typer.Option(None, help="search-space YAML to use instead of the model's own"),
    max_epochs: Optional[int] = typer.Option(None, min=1, help="override max_epochs of every torch model"),
    out: Path = typer.Option(DEFAULT_OUT, help="run folder: Ray results, checkpoints, MLflow store, leaderboard"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: SQLite in the run folder)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address; default starts a local Ray"),
    cpus_per_trial: float = typer.Option(1.0, min=0.01, help="CPUs reserved by each trial"),
    seeds: int = typer.Option(3, min=0, help="re-run each model's best configuration with this many fresh seeds (0: none)"),
    ensemble: Optional[int] = typer.Option(
        None, min=1, help="members per torch model trial (seeds seed..seed+N-1, probabilities averaged; one row)",
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="KEY=VALUE fixed for the sweep, out of the search (repeatable; applies to the models that "
        "know KEY), e.g. --set graph=../shared/data/string_v12_human_ppi",
    ),
    workers_per_trial: int = typer.Option(
        1, min=1, help="Ray Train workers per torch trial (data parallel, each streams its own shard of the store)",
    ),
    gpus_per_trial: float = typer.Option(0.0, min=0.0, help="GPUs per trial, or per worker (fractions allowed)"),
    storage: Optional[str] = typer.Option(
        None, help="Ray results and checkpoints: a path shared by all nodes or an s3:// URL (default: run folder)",
    ),
    deepspeed: Optional[Path] = typer.Option(
        None, help="DeepSpeed JSON config (ZeRO stage, bf16/fp16, gradient_accumulation_steps): torch trials train "
        "with DeepSpeed in Ray Train workers",
    ),
    max_failures: int = typer.Option(0, min=0, help="retries of a trial that raises or dies before it counts as FAILED"),
    resume: Optional[Path] = typer.Option(
        None, help="run folder of an interrupted sweep: finish it with its own options (finished trials are kept)",
    ),
    inject_faults: Optional[str] = typer.Option(
        None, help="chaos testing: KIND:RATE[:once], KIND raise or kill, e.g. raise:0.3 fails ~30% of trials",
    ),
    searcher: str = typer.Option("tpe", help="Optuna sampler proposing the trials: tpe | gp | cmaes | qmc | random"),
    scheduler: str = typer.Option("asha", help="early stopping: asha, or none (every trial to max_epochs)"),
    optuna_storage: Optional[str] = typer.Option(
        None, help="RDB URL for the sweeps' Optuna studies, e.g. postgresql://USER@HOST/DB on a cluster "
        "(default: sqlite:///RUN_FOLDER/optuna.db); optuna-dashboard URL shows them live",
    ),
) -> None:
    """Sweep models over a dataset with Ray Tune + Optuna (TPE by default) + ASHA, tracked in MLflow; print the
    leaderboard."""
    options = {k: v for k, v in locals().items()}
    if resume is not None:
        options = _resumed_options(resume, address=address)
    _run_sweeps(options, resuming=resume is not None)


def _local_cpus(options: dict) -> int:
    """CPUs of a local Ray session. A distributed trial's Tune actor holds 0.01 CPU beside its Train workers, so
    one spare CPU lets N workers x 1 CPU fill an N-core machine instead of waiting forever for 0.01 CPU."""
    cpus = os.cpu_count() or 1
    distributed = options.get("workers_per_trial", 1) > 1 or options.get("deepspeed")
    need = options.get("workers_per_trial", 1) * options.get("cpus_per_trial", 1.0)
    if distributed and need > cpus and not options.get("address"):
        raise ConfigError(f"--workers-per-trial {options['workers_per_trial']} x --cpus-per-trial "
                          f"{options['cpus_per_trial']} needs {need:g} CPUs; this machine has {cpus}")
    return cpus + 1 if distributed else cpus


def _resumed_options(folder: Path, *, address: Optional[str]) -> dict:
    """The options an interrupted sweep in `folder` was started with (a new --address may replace its own)."""
    from omicsweep.benchmark.resume import load_options

    options = load_options(folder)
    for key in ("space", "out", "deepspeed"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
    options["out"] = folder
    if address:
        options["address"] = address
    return options


def _run_sweeps(options: dict, *, resuming: bool) -> None:
    """The body of `omicsweep sweep`: validate, then sweep each model in turn (skipping finished ones on resume)."""
    from omicsweep.benchmark.faults import parse_faults
    from omicsweep.benchmark.metrics import METRIC_NAMES
    from omicsweep.benchmark.resume import load_state, save_options, sweep_key
    from omicsweep.benchmark.searchers import check_scheduler, check_searcher, check_storage, searcher_notes
    from omicsweep.benchmark.strategies import load_deepspeed_config
    from omicsweep.benchmark.space import load_space, sweep_settings, with_fixed
    from omicsweep.benchmark.sweep import SweepRequest, ray_session, run_sweep
    from omicsweep.datasets import open_store, resolve_dataset
    from omicsweep.models import models_for_task
    from omicsweep.reports.board_mlflow import refresh_leaderboard
    from omicsweep.reports.tracking import MlflowRecorder, default_tracking_uri

    dataset, model, trials, concurrency, seed, metric, space, max_epochs, out, tracking_uri, address = (
        options[k] for k in ("dataset", "model", "trials", "concurrency", "seed", "metric", "space", "max_epochs",
                             "out", "tracking_uri", "address"))
    cpus_per_trial, seeds, ensemble, set_ = (options[k] for k in ("cpus_per_trial", "seeds", "ensemble", "set_"))
    parse_faults(options.get("inject_faults"))
    searcher = check_searcher(options.get("searcher", "tpe")).name  # a sampler that cannot run here: exit 2 now
    scheduler = check_scheduler(options.get("scheduler", "asha"))
    check_storage(options.get("optuna_storage"))
    ds_settings = load_deepspeed_config(str(options["deepspeed"])) if options.get("deepspeed") else None
    # validate everything before the run folder exists; the store's task kind picks the models that fit it
    dataset_name, store_path = resolve_dataset(dataset, seed=seed)
    store = open_store(store_path)
    entries = models_for_task(model, store.task_kind, where=str(store_path))
    if space is not None and len(entries) != 1:
        raise ConfigError("--space applies to a single --model")
    spaces = {e.name: load_space(space or e.space_file) for e in entries}
    if ensemble is not None:  # torch models only; estimators have no members to average
        spaces = {e.name: with_fixed(spaces[e.name], {"ensemble": ensemble}) if e.family == "torch" else spaces[e.name]
                  for e in entries}
    metric = metric or store.default_metric
    if metric not in METRIC_NAMES:
        raise ConfigError(f"--metric {metric!r}: expected one of {', '.join(METRIC_NAMES)}")
    spaces, notes = sweep_settings(entries, spaces, set_, store)  # --set values; files configs name, checked + pinned
    for note in notes + searcher_notes(searcher, spaces):
        err_console.print(note, highlight=False, markup=False, soft_wrap=True)

    out.mkdir(parents=True, exist_ok=True)
    state = load_state(out) if resuming else {}
    if not resuming:
        save_options(out, {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items() if k != "resume"})
    uri = tracking_uri or default_tracking_uri(out)
    outcomes = []
    with ray_session(address=address, num_cpus=_local_cpus(options)):
        for entry in entries:
            previous = state.get(sweep_key(dataset_name, entry.name), {})
            if previous.get("status") == "finished":
                err_console.print(f"{dataset_name}/{entry.name}: finished before, kept as it is", highlight=False)
                continue
            request = SweepRequest(
                dataset=dataset_name, store_path=store_path, fingerprint=store.fingerprint, model=entry.name,
                space=spaces[entry.name], trials=trials, concurrency=concurrency, seed=seed, metric=metric,
                run_folder=out, cpus_per_trial=cpus_per_trial, max_epochs=max_epochs, seeds=seeds,
                workers_per_trial=options["workers_per_trial"], gpus_per_trial=options["gpus_per_trial"],
                deepspeed=ds_settings, storage=options["storage"], max_failures=options["max_failures"],
                faults=options["inject_faults"], resume_parent=previous.get("parent_run_id"),
                searcher=searcher, scheduler=scheduler, optuna_storage=options.get("optuna_storage"),
            )
            recorder = MlflowRecorder(uri, artifact_root=out / "mlartifacts")
            with RichProgress(request.n_trials, f"{dataset_name}/{entry.name}") as progress:
                outcome = run_sweep(request, recorder, progress=progress)
            outcomes.append(outcome)
            overhead = "-"
            if outcome.overheads_s:  # the first trial on a worker starts a process; later ones reuse it
                overhead = f"first {outcome.overheads_s[0]:.1f}s, median {statistics.median(outcome.overheads_s):.1f}s"
            err_console.print(
                f"{dataset_name}/{entry.name}: {outcome.trials_finished} finished, {outcome.trials_failed} failed, "
                f"{outcome.wall_time_s:.1f}s wall; trial start-to-first-epoch overhead {overhead}",
                highlight=False,
            )
    _, (csv, parquet) = refresh_leaderboard(uri, out, console)
    console.print(f"leaderboard: {csv}, {parquet}; MLflow: {uri} (run 'leaderboard' of each experiment)", highlight=False)


class _TaggedRecorder:
    """A recorder that adds tags to the sweep's parent run (`train` marks its runs) and forwards the rest."""

    def __init__(self, inner, tags: dict[str, str]) -> None:
        self.inner, self.tags = inner, tags

    def start_sweep(self, *, tags: dict[str, str], **kwargs) -> str:
        return self.inner.start_sweep(tags={**tags, **self.tags}, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@app.command()
@user_errors
def train(
    dataset: str = typer.Option("pbmc68k", help="built-in or registered dataset name, or store path"),
    model: str = typer.Option(..., help="registered model name"),
    ensemble: Optional[int] = typer.Option(
        None, min=1, help="torch models: N members (seeds seed..seed+N-1), probabilities averaged",
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="KEY=VALUE over the model's defaults (repeatable), e.g. --set lr=1e-3 --set n_layers=1",
    ),
    seed: int = typer.Option(0, help="split and training seed"),
    metric: Optional[str] = typer.Option(
        None, help="validation metric for early stopping and the best checkpoint (default: the dataset's)",
    ),
    space: Optional[Path] = typer.Option(None, help="search-space YAML whose defaults to use instead of the model's"),
    out: Path = typer.Option(DEFAULT_OUT, help="run folder: Ray results, checkpoints, MLflow store, leaderboard"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: SQLite in the run folder)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address; default starts a local Ray"),
    cpus_per_trial: float = typer.Option(1.0, min=0.01, help="CPUs (and torch threads) for the run"),
) -> None:
    """One run of a model's defaults (the study's setting) plus --set overrides: no search, same tracking.

    It is a sweep with nothing to search: one MLflow parent run with one child, one leaderboard row.
    """
    from omicsweep.benchmark.metrics import METRIC_NAMES
    from omicsweep.benchmark.space import fixed_space, load_space, parse_overrides, prepared_spaces, store_task
    from omicsweep.benchmark.sweep import SweepRequest, ray_session, run_sweep
    from omicsweep.benchmark.training import check_config, config_keys
    from omicsweep.datasets import open_store, resolve_dataset
    from omicsweep.models import get_model, models_for_task
    from omicsweep.reports.board_mlflow import refresh_leaderboard
    from omicsweep.reports.tracking import MlflowRecorder, default_tracking_uri

    # validate everything before the run folder exists
    entry = get_model(model)
    base = load_space(space or entry.space_file)
    overrides = parse_overrides(set_, base, shared_keys=config_keys(entry.family))
    if ensemble is not None:
        if entry.family != "torch":
            raise ConfigError(f"--ensemble applies to torch models, not {entry.name} (family {entry.family})")
        overrides["ensemble"] = ensemble
    dataset_name, store_path = resolve_dataset(dataset, seed=seed)
    store = open_store(store_path, config={**base.defaults, **overrides})  # pair tasks: images of its bins/sigma
    models_for_task(entry.name, store.task_kind, where=str(store_path))
    metric = metric or store.default_metric
    if metric not in METRIC_NAMES:
        raise ConfigError(f"--metric {metric!r}: expected one of {', '.join(METRIC_NAMES)}")
    # files the config names (a gene graph) are checked against the store and pinned; models see its genes
    spaces, notes = prepared_spaces([entry], {entry.name: fixed_space(base, overrides)}, store)
    run_space = spaces[entry.name]
    for note in notes:
        err_console.print(note, highlight=False, markup=False, soft_wrap=True)
    check_config(entry, {**run_space.defaults, "seed": seed}, store_task(store))

    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_tracking_uri(out)
    request = SweepRequest(
        dataset=dataset_name, store_path=store_path, fingerprint=store.fingerprint, model=entry.name,
        space=run_space, trials=1, concurrency=1, seed=seed, metric=metric, run_folder=out,
        cpus_per_trial=cpus_per_trial, seeds=0,
    )
    recorder = _TaggedRecorder(MlflowRecorder(uri, artifact_root=out / "mlartifacts"), {"omicsweep.command": "train"})
    with ray_session(address=address, num_cpus=os.cpu_count()):
        with RichProgress(1, f"{dataset_name}/{entry.name} (train)") as progress:
            outcome = run_sweep(request, recorder, progress=progress)
    changed = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"
    err_console.print(
        f"{dataset_name}/{entry.name}: {'finished' if outcome.trials_finished else 'FAILED'} in "
        f"{outcome.wall_time_s:.1f}s wall; overrides of the defaults: {changed}",
        highlight=False,
    )
    _, (csv, parquet) = refresh_leaderboard(uri, out, console)
    console.print(f"leaderboard: {csv}, {parquet}; MLflow: {uri} (run 'leaderboard' of each experiment)", highlight=False)
    if not outcome.trials_finished:
        raise typer.Exit(code=1)


@app.command()
@user_errors
def leaderboard(
    out: Path = typer.Option(DEFAULT_OUT, help="run folder holding the MLflow store"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: SQLite in the run folder)"),
    wide: bool = typer.Option(False, "--wide", help="every column (setup, validation value, rank, balanced accuracy, "
                              "collapse check, F1 over seeds, AUROC, resources); the files always have them"),
) -> None:
    """Print the leaderboard from a tracking store (one section per store and selection metric, then the summary
    across datasets), write it as CSV and Parquet, and refresh its copy in MLflow."""
    from omicsweep.errors import InputError
    from omicsweep.reports.board_mlflow import refresh_leaderboard
    from omicsweep.reports.tracking import default_tracking_uri

    if tracking_uri is None and not (out / "mlflow.db").exists():
        raise InputError(f"{out}: no MLflow store (mlflow.db) here; run `omicsweep sweep --out {out}` first")
    _, (csv, parquet) = refresh_leaderboard(tracking_uri or default_tracking_uri(out), out, console, wide=wide)
    console.print(f"leaderboard: {csv}, {parquet}", highlight=False)


def _tracking_store(out: Path, tracking_uri: Optional[str]) -> str:
    """--tracking-uri, else the SQLite store of the run folder (which must exist)."""
    from omicsweep.errors import InputError
    from omicsweep.reports.tracking import default_tracking_uri

    if tracking_uri:
        return tracking_uri
    if not (out / "mlflow.db").exists():
        raise InputError(f"{out}: no MLflow store (mlflow.db) here; pass --out RUN_FOLDER or --tracking-uri")
    return default_tracking_uri(out)


@app.command()
@user_errors
def reproduce(
    run_id: str = typer.Argument(..., help="MLflow run id of a trial (see the leaderboard's best_run_id)"),
    out: Path = typer.Option(DEFAULT_OUT, help="run folder holding the MLflow store"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: SQLite in the run folder)"),
    store: Optional[Path] = typer.Option(None, help="the dataset store, if it moved (its fingerprint must match)"),
    workers: Optional[int] = typer.Option(
        None, min=1, help="train on this many workers instead of the trial's (1: in this process); the setup then "
        "differs and the metrics are not expected to match",
    ),
) -> None:
    """Re-run a trial's exact configuration (same seed, store, epochs and training setup where this machine allows)
    and compare every final metric."""
    from rich.table import Table

    from omicsweep.benchmark.reproduce import reproduce as reproduce_trial
    from omicsweep.reports.tracking import read_trial_record

    record = read_trial_record(_tracking_store(out, tracking_uri), run_id)
    outcome = reproduce_trial(record, store_path=store, workers=workers)
    where = f"run {run_id} ({record.dataset}/{record.model}, seed {record.seed}, {outcome.epochs} epoch(s)) on {outcome.store_path}"
    for note in outcome.setup_notes:
        console.print(f"warning: {note}", highlight=False, soft_wrap=True)
    if outcome.setup_differs:
        _print_other_setup(outcome, where)
        raise typer.Exit(code=1)
    if outcome.matched:
        console.print(f"reproduced {where}: all {len(outcome.compared)} metrics match exactly", highlight=False)
        return
    table = Table(title=f"{len(outcome.differences)} of {len(outcome.compared)} metrics differ")
    for column in ("metric", "recorded", "reproduced", "difference"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for diff in outcome.differences:
        delta = "-" if diff.recorded is None or diff.reproduced is None else f"{diff.reproduced - diff.recorded:+.3g}"
        table.add_row(diff.key, repr(diff.recorded), repr(diff.reproduced), delta)
    console.print(f"NOT reproduced: {where}", highlight=False)
    console.print(table)
    if outcome.version_changes:
        for what, before, now in outcome.version_changes:
            console.print(f"  {what}: recorded {before}, now {now}", highlight=False)
    else:
        console.print("  code and package versions are the ones recorded", highlight=False)
    raise typer.Exit(code=1)


def _print_other_setup(outcome, where: str) -> None:
    """A re-run that could not train the way its trial did: its metrics side by side, not as a reproduction."""
    from rich.table import Table

    console.print(f"setup differs: {where} trained as '{outcome.recorded_setup}', this re-run as '{outcome.setup}'; "
                  "the metrics are not expected to match", highlight=False, soft_wrap=True)
    table = Table(title="metrics under a different training setup (not comparable)")
    for column in ("metric", "recorded", "re-run"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, (before, now) in outcome.compared.items():
        table.add_row(key, repr(before), repr(now))
    console.print(table)


@app.command()
@user_errors
def predict(
    input: Path = typer.Argument(..., help="what to label: cells (.h5ad or AnnData .zarr), or for a gene-pair model "
                                 "a pair-task store (`omicsweep ingest-pairs`)"),
    run: str = typer.Option(..., "--run", help="MLflow run id of a trained trial (see the leaderboard's best_run_id)"),
    out: Path = typer.Option(..., "--out", help="file to write (atomic): .h5ad = INPUT plus prediction columns in "
                             "obs, .csv = one row per cell or gene pair"),
    runs: Path = typer.Option(DEFAULT_OUT, help="run folder holding the MLflow store"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: SQLite in the run folder)"),
    layer: Optional[str] = typer.Option(None, help="use this layer instead of X"),
    raw: bool = typer.Option(False, "--raw", help="use .raw.X instead of X"),
    normalize: str = typer.Option(
        "auto", help="auto (counts into a model trained on log data get cp10k-log1p), none, log1p or cp10k-log1p",
    ),
    truth: Optional[str] = typer.Option(None, help="obs column of known labels: print the agreement"),
) -> None:
    """Label cells with a trained model: genes aligned by name (missing ones zero), the training transform applied.
    A gene-pair model labels every pair of a pair-task store from its images, made as its trial made them."""
    import tempfile

    import numpy as np

    from omicsweep.benchmark import predict as prediction
    from omicsweep.datasets.pair_store import is_pair_store
    from omicsweep.errors import InputError
    from omicsweep.reports.tracking import download_checkpoint, read_trial_record
    from omicsweep.tasks import GENE_PAIR_IMAGE

    uri = _tracking_store(runs, tracking_uri)
    record = read_trial_record(uri, run)
    with tempfile.TemporaryDirectory(prefix="omicsweep-predict-") as tmp:
        trained = prediction.load_trained_model(download_checkpoint(uri, run, Path(tmp)), record.model)
    prediction.check_output(trained, out)
    if trained.task.kind == GENE_PAIR_IMAGE:
        store = prediction.read_pair_store(input, trained)
        prediction.write_pair_predictions(store, prediction.predict_pairs(trained, store), out)
        console.print(f"wrote {out}: {store.n_pairs} gene pairs labelled by {record.model} (run {run}; images "
                      f"{store.bins}x{store.bins}, sigma {store.sigma:g})", highlight=False)
        return
    if is_pair_store(input):
        raise InputError(f"{input}: is a gene-pair task store, but {record.model} labels cells; pass an h5ad")
    adata, matrix, genes, matrix_name = prediction.read_input(input, layer=layer, use_raw=raw)
    if truth is not None and truth not in adata.obs.columns:
        raise InputError(f"{input}: no obs column {truth!r} for --truth")
    if trained.value_kind is None and record.store_path and Path(record.store_path).exists():
        from omicsweep.datasets import Store

        trained.value_kind = Store(record.store_path).provenance.get("value_kind")
    values, how = prediction.normalize(matrix, normalize, trained_kind=trained.value_kind)
    aligned = prediction.align_genes(values, genes, trained.genes)
    console.print(
        f"genes: {aligned.present} of {len(trained.genes)} model genes present in {input.name} "
        f"({len(aligned.missing)} missing, set to 0; {aligned.unused} input genes unused); "
        f"input {matrix_name}, normalization {how}",
        highlight=False,
    )
    if aligned.present == 0:
        raise InputError(f"{input}: none of the model's {len(trained.genes)} genes are in {matrix_name}'s gene names")
    result = prediction.predict_cells(trained, aligned.matrix)
    info = {
        "run_id": run, "model": record.model, "dataset": record.dataset, "genes_present": aligned.present,
        "genes_missing": aligned.missing, "normalization": how, "matrix": matrix_name,
    }
    prediction.write_predictions(adata, result, out, info=info)
    labels, counts = np.unique(np.asarray(result.labels, dtype=str), return_counts=True)
    console.print(
        f"wrote {out}: {adata.n_obs} cells labelled by {record.model} (run {run}); "
        + ", ".join(f"{label} {n}" for n, label in sorted(zip(counts, labels), key=lambda c: -c[0])),
        highlight=False,
    )
    if truth is not None:
        known = adata.obs[truth].astype(str).isin(trained.classes).to_numpy()
        agree = adata.obs[truth].astype(str).to_numpy() == np.asarray(result.labels, dtype=str)
        console.print(
            f"agreement with obs[{truth!r}]: {agree[known].mean() if known.any() else float('nan'):.3f} "
            f"over {int(known.sum())} cells whose label the model knows ({int((~known).sum())} others)",
            highlight=False,
        )


@app.command()
@user_errors
def export(
    run: str = typer.Option(..., "--run", help="MLflow run id of a trained trial"),
    name: str = typer.Option(..., "--name", help="registered model name"),
    out: Path = typer.Option(DEFAULT_OUT, help="run folder holding the MLflow store"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: SQLite in the run folder)"),
) -> None:
    """Register a trial's model in MLflow's model registry (pyfunc with a gene-column signature)."""
    from omicsweep.reports.export import export_model

    uri = _tracking_store(out, tracking_uri)
    model_uri, version = export_model(uri, run, name)
    console.print(f"registered {name} version {version} from run {run} ({model_uri}); "
                  f"load with mlflow.pyfunc.load_model('models:/{name}/{version}')", highlight=False)


@app.command()
@user_errors
def report(
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write (self-contained)"),
    runs: Path = typer.Option(DEFAULT_OUT, help="run folder holding the MLflow store"),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: SQLite in the run folder)"),
    attach: bool = typer.Option(True, help="also log each plot as an artifact of the MLflow run it describes"),
) -> None:
    """Write one self-contained HTML report: leaderboards and plots per dataset (images embedded)."""
    from omicsweep.reports.figures import collect_figures
    from omicsweep.reports.html import report_html, write_report
    from omicsweep.reports.board_mlflow import publish_report
    from omicsweep.reports.board_mlflow import refresh_leaderboard

    uri = _tracking_store(runs, tracking_uri)
    table, _ = refresh_leaderboard(uri, None)
    figures = collect_figures(uri, table, attach_to_runs=attach)
    written = write_report(report_html(table, figures, source=uri), out)
    publish_report(uri, table, written)
    n_figures = sum(len(f.figures) for found in figures.values() for f in found)
    console.print(f"wrote {written}: {len(table)} leaderboard rows, {n_figures} figures", highlight=False)


from omicsweep.cli_corpus import corpus_app, gene2vec  # noqa: E402  (scBERT I: pretraining corpus, gene2vec)

app.add_typer(corpus_app, name="corpus")
app.command("gene2vec")(gene2vec)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
