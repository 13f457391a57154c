"""A fine-tuned scbert away from its training (issue 14): what `export` bundles so the registered model loads on a
machine without the pinned pretraining checkpoint, and how much of its vocabulary a `predict` input covers.

A trial's model.pt holds what it trained; a frozen backbone's weights, the vocabulary (pretrain.json's `genes`, or
the `vocabulary=` store or file) and the sizes come from the checkpoint `prepare` pinned by path and sha256. The
export bundle holds copies of the whole module.pt and pretrain.json (not only the frozen weights the trial left
out: the pinned sha256 then checks the copy as it checked the original) and vocabulary.txt, the vocabulary's genes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from omicsweep.errors import InputError
from omicsweep.models.scbert import (
    DEFAULT_MIN_COVERAGE, MODULE_FILE, STATE_FILE, ScBertClassifier, _pinned_folder, _sha256, is_none,
    read_checkpoint,
)

VOCABULARY_FILE = "vocabulary.txt"  # the bundle's copy of the checkpoint's genes, one a line


def bundle_backbone(config: dict[str, Any], dest: Path) -> Path | None:
    """Copies of what a build of `config` reads outside the trial's checkpoint, in `dest` (created): module.pt,
    pretrain.json and vocabulary.txt; None for a configuration that pins no checkpoint (the store's vocabulary)."""
    pinned = _pinned_folder(config)
    if pinned is None:
        return None
    folder, sha = pinned
    vocabulary, _, _, digest = read_checkpoint(folder, config, sha)
    dest = Path(dest)
    dest.mkdir(parents=True)
    for name in (MODULE_FILE, STATE_FILE):
        shutil.copyfile(folder / name, dest / name)
    (dest / VOCABULARY_FILE).write_text("".join(f"{gene}\n" for gene in vocabulary))
    if _sha256((dest / MODULE_FILE).read_bytes()) != digest:
        raise InputError(f"{folder / MODULE_FILE}: changed while it was copied for export; export again")
    return dest


def bundled_config(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The configuration of an exported model, its pinned checkpoint the copy `bundle_backbone` wrote in `folder`:
    module.pt checked against the trial's pinned sha256, the vocabulary read from the copy."""
    if is_none(config.get("checkpoint_sha256")):
        raise InputError(f"{folder}: a bundled backbone, but the trial's configuration pins no checkpoint_sha256")
    return {**config, "checkpoint_path": str(folder), "vocabulary": str(Path(folder) / VOCABULARY_FILE)}


def input_coverage(model, present: np.ndarray, config: dict[str, Any], where: str) -> str | None:
    """'N of V vocabulary genes present in WHERE (x%)' for an input that has the training store's genes `present`
    marks (a bool per store gene); an InputError below the model's min_vocab_coverage, as in training. None for a
    model that holds no scbert classifier."""
    classifier = next((m for m in model.modules() if isinstance(m, ScBertClassifier)), None)
    if classifier is None:
        return None
    index = classifier.gene_index.cpu().numpy()
    found, total = int(np.append(np.asarray(present, dtype=bool), False)[index].sum()), len(index)
    fraction = found / max(1, total)
    minimum = float(config.get("min_vocab_coverage", DEFAULT_MIN_COVERAGE) or 0.0)
    note = f"{found} of {total} vocabulary genes present in {where} ({fraction:.1%})"
    if fraction < minimum:
        raise InputError(f"{note}: below min_vocab_coverage={minimum}; the input's gene symbols barely overlap the "
                         "model's pretraining vocabulary (another species or id type?)")
    return f"vocabulary: {note}; the others are zero"
