"""Shared fixtures: one Ray session per test run, real scanpy data, a private cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

# the real datasets beside the checkout (../shared/data); OMICSWEEP_SHARED_DATA points elsewhere (a missing folder
# makes the tests that need them skip, as on a clone without it)
SHARED_DATA = Path(os.environ.get("OMICSWEEP_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

NO_SHARED_DATA = (f"{SHARED_DATA} is not here: the real datasets live in ../shared/data beside the checkout "
                  "(or set OMICSWEEP_SHARED_DATA)")


def shared_data(*parts: str) -> Path:
    """A path under the shared data folder; the calling test or fixture skips, with the reason, where it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(NO_SHARED_DATA if not SHARED_DATA.is_dir() else f"{path} is not here")
    return path


def pytest_collection_modifyitems(config, items):
    """Tests marked `shared_data` skip with the reason when ../shared/data is absent (a clone without it)."""
    if SHARED_DATA.is_dir():
        return
    for item in items:
        if item.get_closest_marker("shared_data"):
            item.add_marker(pytest.mark.skip(reason=NO_SHARED_DATA))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Built-in datasets are ingested into a per-run cache, never the user's."""
    folder = tmp_path_factory.mktemp("cache")
    os.environ["OMICSWEEP_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for the whole run; sweeps reuse it instead of starting their own."""
    import ray

    # address="local": never attach to a cluster another process started with `ray start` on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def swept(ray_session, pbmc_store, tmp_path_factory):
    """One small real sweep (mlp, logreg, majority; 2 seed re-runs) shared by the sweep, reproduce, predict,
    leaderboard and report tests: (run folder, CLI result)."""
    from typer.testing import CliRunner

    from omicsweep.cli import app

    out = tmp_path_factory.mktemp("runs") / "run"
    result = CliRunner().invoke(
        app, ["sweep", "--dataset", "pbmc68k", "--model", "mlp,logreg,majority", "--trials", "4", "--concurrency", "2",
              "--seed", "0", "--max-epochs", "3", "--reruns", "2", "--runs", str(out)],
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    return out, result


@pytest.fixture(scope="session")
def pbmc_adata():
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


@pytest.fixture(scope="session")
def pbmc_h5ad(pbmc_adata, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("h5ad") / "pbmc68k_reduced.h5ad"
    pbmc_adata.write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def pbmc_store(private_cache) -> Path:
    from omicsweep.datasets import resolve_dataset

    return resolve_dataset("pbmc68k")[1]


@pytest.fixture(scope="session")
def actinn_store(tmp_path_factory) -> Path:
    """ACTINN's 1,000 mouse immune cells (shared data), ingested: the expression behind gene-pair images."""
    from omicsweep.datasets import ingest_file

    out = tmp_path_factory.mktemp("actinn") / "actinn.zarr"
    ingest_file(shared_data("actinn_mouse_immune", "actinn_train_set.h5ad"), label_col="cell_type", out=out)
    return out


CNNC_DENDRITIC = SHARED_DATA / "cnnc_gene_pairs" / "dendritic_gene_pairs_200.txt.xz"


@pytest.fixture(scope="session")
def pair_store(actinn_store, tmp_path_factory) -> Path:
    """CNNC's dendritic-cell TF pairs matched to the ACTINN genes: a seeded 1,500 of them, 3 folds by data part."""
    from omicsweep.datasets.pairs import PairIngestOptions, ingest_pairs

    out = tmp_path_factory.mktemp("pairs") / "dendritic_pairs.zarr"
    source = shared_data(*CNNC_DENDRITIC.parts[-2:])
    ingest_pairs(source, expression=actinn_store, out=out, options=PairIngestOptions(max_pairs=1500))
    return out


@pytest.fixture
def cli():
    """Invoke the real CLI in-process; returns (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from omicsweep.cli import app

    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args])
        return result.exit_code, result.stdout, result.stderr

    return invoke


def assert_one_line_error(code, stdout, stderr, *needles):
    """A user error: exit code 2, exactly one line on stderr naming every needle, no traceback."""
    assert code == 2, (code, stdout, stderr)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr + stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def load_registered(run_folder, name: str, version: int = 1):
    """The pyfunc model `omicsweep export` registered in a run folder's MLflow store (the global URI restored)."""
    import mlflow

    from omicsweep.reports.tracking import default_tracking_uri

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(default_tracking_uri(run_folder))
    try:
        return mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: a second torch thread only adds contention (10x slower here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
