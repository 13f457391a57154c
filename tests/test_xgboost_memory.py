"""xgboost's training memory does not grow with the training rows (models/xgboost_model.py): the bin edges come
from a sample of rows and the quantised pages go to disk, so a fit on ten times the rows peaks about as high.
Before, the quantile sketch over the whole split cost ~33 bytes a non-zero (4.6 GB at 200k x 20k)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, scipy.sparse as sp
    from omicsweep.models.xgboost_model import XGBoostClassifier
    rows, genes, per_row = int(sys.argv[1]), 2000, 200
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, rows)
    indices = np.sort(rng.choice(genes, (rows, per_row)) , axis=1).astype(np.int32)
    data = rng.random(indices.shape, dtype=np.float32) + (indices % 4 == y[:, None])
    x = sp.csr_matrix((data.ravel(), indices.ravel(), np.arange(rows + 1) * per_row), shape=(rows, genes))
    x.sum_duplicates()
    model = XGBoostClassifier(n_estimators=1, max_depth=2, device="cpu")
    model.fit(x[:64], y[:64])  # xgboost's own one-off allocations: not the fit's
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model.fit(x, y)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"grown_mb": grown / 1024, "nnz": int(x.nnz), "accuracy": float((model.predict(x) == y).mean())}))
""")


def _probe(rows: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(rows)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_xgboost_fit_peak_does_not_grow_with_rows():
    from omicsweep.models.xgboost_model import SKETCH_ROWS

    small, large = _probe(SKETCH_ROWS), _probe(10 * SKETCH_ROWS)
    extra_nnz = large["nnz"] - small["nnz"]  # ~7.4M non-zeros: 59 MB as CSR, 295 MB dense, ~230 MB sketched before
    growth = large["grown_mb"] - small["grown_mb"]
    assert growth < 8 * extra_nnz / 2**20, f"peak grew {growth:.0f} MB for {extra_nnz:,} more non-zeros"
    assert large["accuracy"] > 0.35  # it learned from the rows (four classes: chance 0.25; one depth-2 round)
