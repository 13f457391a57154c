"""MLflow pyfunc wrapper of a trial's model, logged as code (MLflow's models-from-code): nothing is pickled.

Input: a DataFrame whose columns are gene names (the training store's genes; the signature lists them), values
on the training store's scale; for a gene-pair model (CNNC), one flattened pair image per row, columns the pixel
names r0c0, r0c1, ... at the trial's `bins`. Output: predicted label, its probability and the top-3 labels per row.
A model that reads files beyond its checkpoint when built (a fine-tuned scbert's pinned pretraining checkpoint and
vocabulary) loads them from the copies `export` bundled (artifact `bundle`), never from the paths it trained with.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

from omicsweep.schema import BUNDLE_ARTIFACTS, CHECKPOINT_ARTIFACTS


class OmicsweepModel(PythonModel):
    def load_context(self, context) -> None:
        from omicsweep.benchmark.predict import load_trained_model

        bundle = context.artifacts.get(BUNDLE_ARTIFACTS)  # the copies export made of a backbone and vocabulary
        self.trained = load_trained_model(context.artifacts[CHECKPOINT_ARTIFACTS], context.model_config["model"],
                                          bundle=bundle)

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd

        from omicsweep.benchmark.predict import align_genes, predict_cells

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        aligned = align_genes(frame.to_numpy(dtype=np.float32), list(map(str, frame.columns)), self.trained.genes)
        result = predict_cells(self.trained, aligned.matrix)
        return pd.DataFrame(
            {
                "predicted_label": result.labels,
                "predicted_probability": result.probability,
                "predicted_top3": ["; ".join(row) for row in result.top],
            },
            index=frame.index,
        )


mlflow.models.set_model(OmicsweepModel())
