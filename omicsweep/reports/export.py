"""Register a trial's model in MLflow's model registry as a pyfunc with a signature (offline, no pickling)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from omicsweep.reports.tracking import download_checkpoint, read_trial_record
from omicsweep.schema import BUNDLE_ARTIFACTS, CHECKPOINT_ARTIFACTS

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    from omicsweep.environment import package_versions

    versions = package_versions()
    return [f"omicsweep=={versions['omicsweep']}", f"torch=={versions['torch']}", f"scikit-learn=={versions['scikit-learn']}",
            f"mlflow=={versions['mlflow']}", f"skops=={version('skops')}"]  # skops: an estimator checkpoint's format


def model_signature(genes: list[str]):
    """Input columns: the model's features by name (genes; a gene-pair model's image pixels r0c0, r0c1, ...)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("float", gene) for gene in genes])
    outputs = Schema([ColSpec("string", "predicted_label"), ColSpec("double", "predicted_probability"),
                      ColSpec("string", "predicted_top3")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def export_model(tracking_uri: str, run_id: str, name: str) -> tuple[str, str]:
    """Log the run's checkpoint as a pyfunc model of that run and register it as `name`; (model URI, version)."""
    import mlflow

    from omicsweep.benchmark.predict import bundle_priors, load_trained_model

    record = read_trial_record(tracking_uri, run_id)
    previous = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="omicsweep-export-") as tmp:
        folder = download_checkpoint(tracking_uri, run_id, Path(tmp))
        trained = load_trained_model(folder, record.model)  # fails here, not at serving time, if it cannot load
        artifacts = {CHECKPOINT_ARTIFACTS: str(folder)}
        # what it reads beyond the checkpoint (a scbert's pinned backbone and vocabulary) goes with it; the copies
        # load here, as they will where it is served
        bundle = bundle_priors(trained, Path(tmp) / BUNDLE_ARTIFACTS)
        if bundle is not None:
            trained = load_trained_model(folder, record.model, bundle=bundle)
            artifacts[BUNDLE_ARTIFACTS] = str(bundle)
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            with warnings.catch_warnings(), mlflow.start_run(run_id=run_id):
                warnings.simplefilter("ignore", UserWarning)  # advice about type hints and input examples
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(PYFUNC_CODE),
                    artifacts=artifacts,
                    model_config={"model": record.model},
                    signature=model_signature(trained.genes),
                    pip_requirements=pip_requirements(),
                    registered_model_name=name,
                )
        finally:
            mlflow.set_tracking_uri(previous)
    return info.model_uri, str(info.registered_model_version)
