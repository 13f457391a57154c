"""A pretraining corpus: many expression inputs written onto one ordered gene vocabulary, row block by row block.

`build_corpus(inputs, vocab, out)` reads each input (any format `ingest` reads, through `read_any`, or an
existing store, streamed by row chunk), maps its genes onto the vocabulary by symbol (exact case first, then
case-insensitively; vocabulary genes an input lacks are zero; input genes outside it are dropped and counted),
and appends the rows to one store through `StoreWriter` (atomic: nothing is left on failure).

What the store holds beyond a cell store's layout:
    labels      one placeholder class 'unlabelled' (StoreWriter requires labels; a corpus has none)
    split       train / val per input, seeded by (seed, input index); no test split. Train rows of every input
                come first, then val rows (val blocks are spilled to a temporary folder beside `out`), so each
                split streams sequentially.
    cell ids    '<input index>:<cell id in that input>'
    provenance  'corpus': the vocabulary, every input's coverage, and `segments` (input, split, row range) that
                `corpus_sources` turns back into a source per cell.
Memory: one input at a time for files (the readers load a file whole), one row chunk for store inputs.
`exclude_test_of=STORE` leaves out that store's test cells: inputs are matched to it by path (the store itself,
or the file its provenance names as `source`), cells by cell id.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import scipy.sparse as sp

from omicsweep.datasets.open import open_store
from omicsweep.datasets.store import META_KEY, ROWS_PER_CHUNK, SPLITS, StoreWriter
from omicsweep.errors import ConfigError, InputError
from omicsweep.tasks import CELL_CLASSIFICATION

PLACEHOLDER_CLASS = "unlabelled"
TRAIN, VAL = SPLITS.index("train"), SPLITS.index("val")


# ---- the vocabulary ---------------------------------------------------------------------------------------------
def read_vocabulary(path: Path) -> list[str]:
    """Gene symbols, one a line (blank lines skipped). Exact duplicates are an error; symbols differing only in
    case (the gene2vec list has Igk and IGK) are kept, and an input gene matches its exact case first."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: vocabulary file not found")
    genes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not genes:
        raise InputError(f"{path}: the vocabulary is empty; expected one gene symbol a line")
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if len(line.split()) > 1:
            raise InputError(f"{path}: line {number} has {len(line.split())} fields ({line.strip()[:40]!r}); a "
                             "vocabulary is one gene symbol a line (cut the symbol column out of a table)")
    seen: dict[str, int] = {}
    for number, gene in enumerate(genes, start=1):
        if gene in seen:
            raise InputError(f"{path}: gene {gene!r} appears twice in the vocabulary (lines {seen[gene]} and "
                             f"{number}); remove the duplicate")
        seen[gene] = number
    return genes


@dataclass
class GeneMap:
    """Input gene columns -> vocabulary columns, as a sparse 0/1 matrix (duplicated symbols add up)."""

    matrix: sp.csr_matrix  # (input genes, vocabulary genes)
    matched_inputs: int
    found_vocab: int

    @classmethod
    def build(cls, input_genes: np.ndarray, vocab: list[str]) -> "GeneMap":
        exact = {g: i for i, g in enumerate(vocab)}
        folded: dict[str, int] = {}
        for i, g in enumerate(vocab):
            folded.setdefault(g.casefold(), i)
        rows, cols = [], []
        for j, gene in enumerate(map(str, input_genes)):
            col = exact.get(gene, folded.get(gene.casefold()))
            if col is not None:
                rows.append(j)
                cols.append(col)
        matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(input_genes), len(vocab)))
        return cls(matrix, len(rows), len(set(cols)))


# ---- inputs -----------------------------------------------------------------------------------------------------
def _is_store(path: Path) -> bool:
    return path.is_dir() and (path / "uns" / META_KEY).exists()


def _resolved(path) -> str:
    return str(Path(str(path)).expanduser().resolve())


@dataclass
class CorpusInput:
    """One input: its genes, cell ids, row blocks, and the paths that identify it (for exclude_test_of)."""

    path: Path
    kind: str
    genes: np.ndarray
    cell_ids: np.ndarray
    identities: set[str] = field(default_factory=set)
    _matrix: Any = None
    _store: Any = None

    @classmethod
    def open(cls, path: Path) -> "CorpusInput":
        path = Path(path)
        if _is_store(path):
            store = open_store(path)
            if not hasattr(store, "read_rows") or store.task_kind != CELL_CLASSIFICATION:
                raise InputError(f"{path}: is not a cell expression store; give a cell store or an expression file")
            return cls(path, "store", store.genes(), store.cell_ids(), input_identities(path), _store=store)
        from omicsweep.datasets.readers import READ_INFO_KEY, read_any

        adata = read_any(path, unique_genes=True)  # duplicated symbols are summed onto one vocabulary column
        kind = str(adata.uns.get(READ_INFO_KEY, {}).get("format", "file"))
        return cls(path, kind, np.asarray(adata.var_names, dtype=str), np.asarray(adata.obs_names, dtype=str),
                   {_resolved(path)}, _matrix=adata.X)

    def blocks(self) -> Iterator[tuple[int, sp.csr_matrix]]:
        n = len(self.cell_ids)
        for start in range(0, n, ROWS_PER_CHUNK):
            stop = min(n, start + ROWS_PER_CHUNK)
            if self._store is not None:
                yield start, self._store.read_rows(start, stop)
            else:
                block = self._matrix[start:stop]
                yield start, (block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block)))


def input_identities(path: Path) -> set[str]:
    """The resolved paths an input stands for: itself, and for a store the file it was ingested from."""
    ids = {_resolved(path)}
    if _is_store(Path(path)):
        source = open_store(path).provenance.get("source")
        if source and "://" not in str(source):
            ids.add(_resolved(source))
    return ids


def _test_cells_of(store_path: Path) -> tuple[set[str], set[str]]:
    store = open_store(store_path)
    return input_identities(store_path), set(store.cell_ids()[store.split_indices("test")])


def _check_split(split) -> float:
    try:
        train, val = (float(v) for v in split)
    except (TypeError, ValueError):
        raise ConfigError(f"split={split!r}: expected two fractions (train, val), e.g. (0.95, 0.05)") from None
    if not (0 < train <= 1 and 0 <= val < 1 and abs(train + val - 1) < 1e-6):
        raise ConfigError(f"split={split!r}: train and val fractions must be in [0, 1] and sum to 1")
    return val


# ---- building ---------------------------------------------------------------------------------------------------
class _Assembler:
    """Appends train rows to the writer and spills val rows to `spill`, then appends the spilled rows."""

    def __init__(self, writer: StoreWriter, spill: Path):
        self.writer, self.spill = writer, spill
        self.train_ids: list[np.ndarray] = []
        self.val_parts: list[tuple[int, Path, np.ndarray]] = []
        self.segments: list[dict[str, Any]] = []

    def add(self, index: int, block: sp.csr_matrix, ids: np.ndarray, is_val: np.ndarray) -> None:
        train = np.flatnonzero(~is_val)
        if len(train):
            self._segment(index, "train", len(train))
            self.writer.append(block[train])
            self.train_ids.append(ids[train])
        val = np.flatnonzero(is_val)
        if len(val):
            part = self.spill / f"{len(self.val_parts):06d}.npz"
            sp.save_npz(part, block[val])
            self.val_parts.append((index, part, ids[val]))

    def _segment(self, index: int, split: str, rows: int) -> None:
        start = self.writer.n_rows
        last = self.segments[-1] if self.segments else None
        if last and last["input"] == index and last["split"] == split and last["stop"] == start:
            last["stop"] = start + rows
        else:
            self.segments.append({"input": index, "split": split, "start": start, "stop": start + rows})

    def finish_rows(self) -> tuple[np.ndarray, np.ndarray]:
        n_train = self.writer.n_rows
        val_ids = []
        for index, part, ids in self.val_parts:
            block = sp.load_npz(part)
            self._segment(index, "val", block.shape[0])
            self.writer.append(block)
            val_ids.append(ids)
        ids = np.concatenate(self.train_ids + val_ids) if self.train_ids or val_ids else np.zeros(0, str)
        split_codes = np.full(len(ids), VAL, dtype=np.int8)
        split_codes[:n_train] = TRAIN
        return ids, split_codes


def _unmatched_genes(genes: np.ndarray) -> str:
    """What an input's gene names are when none matches the vocabulary: made up by a reader, Ensembl ids, other."""
    names = [str(g) for g in genes]
    first = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    if all(re.fullmatch(r"(gene_?)?\d+", g, flags=re.IGNORECASE) for g in names):
        return f"has no gene names ({first}: made up by the reader, or plain numbers), so none is in"
    if sum(bool(re.match(r"ENS[A-Z]*G\d{6}", g)) for g in names) > len(names) / 2:
        return f"has Ensembl ids ({first}), not gene symbols (map them to symbols first), so none is in"
    return f"none of its {len(names)} genes ({first}) is in"


def _add_input(assembler: _Assembler, index: int, item: CorpusInput, vocab: list[str], vocab_path: Path,
               excluded_ids: set[str] | None, val_fraction: float, seed: int) -> dict[str, Any]:
    gene_map = GeneMap.build(item.genes, vocab)
    if gene_map.matched_inputs == 0:
        raise InputError(f"{item.path}: {_unmatched_genes(item.genes)} the vocabulary {vocab_path}; the input needs "
                         "gene symbols (e.g. CD3E)")
    keep = np.ones(len(item.cell_ids), dtype=bool) if excluded_ids is None else ~np.isin(item.cell_ids, list(excluded_ids))
    kept = int(keep.sum())
    n_val = int(round(kept * val_fraction))
    is_val = np.zeros(len(keep), dtype=bool)
    is_val[np.flatnonzero(keep)[np.random.default_rng([seed, index]).permutation(kept)[:n_val]]] = True
    total = matched = 0.0
    counts = True
    prefixed = np.char.add(f"{index}:", item.cell_ids.astype(str))
    for start, block in item.blocks():
        stop = start + block.shape[0]
        if block.nnz:
            counts = counts and bool(block.data.min() >= 0 and np.all(block.data == np.round(block.data)))
        total += float(block.sum())
        mapped = sp.csr_matrix(block @ gene_map.matrix, dtype=np.float32)
        mapped.eliminate_zeros()
        matched += float(mapped.sum())
        rows = np.flatnonzero(keep[start:stop])
        assembler.add(index, mapped[rows], prefixed[start:stop][rows], is_val[start:stop][rows])
    return {
        "input": str(item.path), "format": item.kind, "cells": len(keep), "kept_cells": kept,
        "excluded_test_cells": len(keep) - kept, "train": kept - n_val, "val": n_val,
        "input_genes": len(item.genes), "input_genes_matched": gene_map.matched_inputs,
        "vocab_genes_found": gene_map.found_vocab, "vocab_fraction": gene_map.found_vocab / len(vocab),
        "counts_kept_fraction": matched / total if total else 0.0, "value_kind": "counts" if counts else "other",
    }


def build_corpus(inputs, vocab, out, *, exclude_test_of=None, split=(0.95, 0.05), seed: int = 0,
                 overwrite: bool = False, nnz_per_row_hint: int = 1000, progress=None) -> dict[str, Any]:
    """Write the corpus store at `out` from `inputs` on the vocabulary file `vocab`; returns the summary
    (fingerprint, cells, per-input coverage) that is also recorded in the store's provenance under 'corpus'.

    progress: optional callable(coverage dict) called after each input.
    """
    inputs, vocab_path, out = [Path(p) for p in inputs], Path(vocab), Path(out)
    if not inputs:
        raise ConfigError("corpus build needs at least one input")
    val_fraction = _check_split(split)
    genes = read_vocabulary(vocab_path)
    exclude = _test_cells_of(Path(exclude_test_of)) if exclude_test_of is not None else None
    for path in inputs:
        if not path.exists():
            raise InputError(f"{path}: input not found")
    identities = [input_identities(p) for p in inputs]
    if exclude is not None and not any(ids & exclude[0] for ids in identities):
        raise InputError(f"{exclude_test_of}: none of the inputs is this store or its source "
                         f"({', '.join(sorted(exclude[0]))}); its test cells cannot be matched")
    spill = out.parent / f".{out.name}.val-spill-{uuid.uuid4().hex[:8]}"
    coverage = []
    try:
        with StoreWriter(out, genes=np.asarray(genes), nnz_per_row_hint=nnz_per_row_hint, overwrite=overwrite) as writer:
            spill.mkdir(parents=True)
            assembler = _Assembler(writer, spill)
            for index, path in enumerate(inputs):  # one input in memory at a time; a bad one leaves nothing
                excluded = exclude[1] if exclude is not None and identities[index] & exclude[0] else None
                item = CorpusInput.open(path)
                coverage.append(_add_input(assembler, index, item, genes, vocab_path, excluded, val_fraction, seed))
                del item
                if progress is not None:
                    progress(coverage[-1])
            cell_ids, split_codes = assembler.finish_rows()
            if not len(cell_ids):
                raise InputError(f"{out}: no cells left to write (all excluded?)")
            summary = {"vocabulary": str(vocab_path), "vocabulary_genes": len(genes), "inputs": coverage,
                       "segments": assembler.segments, "split": [1 - val_fraction, val_fraction], "seed": seed,
                       "exclude_test_of": str(exclude_test_of) if exclude_test_of is not None else None}
            fingerprint = writer.finish(
                codes=np.zeros(len(cell_ids), dtype=np.int64), classes=[PLACEHOLDER_CLASS], split_codes=split_codes,
                cell_ids=cell_ids,
                provenance={"source": "corpus", "value_kind": "counts", "label_column": None, "matrix": "X",
                            "preprocessing": [], "corpus": summary},
            )
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return {"out": str(out), "fingerprint": fingerprint, "cells": len(cell_ids), **summary}


def corpus_sources(store) -> tuple[list[str], np.ndarray]:
    """(input paths, input index per cell) of a corpus store, from its recorded segments."""
    corpus = store.provenance.get("corpus")
    if not corpus:
        raise InputError(f"{store.path}: is not a corpus store (no 'corpus' provenance); build it with "
                         "`omicsweep corpus build`")
    codes = np.full(store.n_cells, -1, dtype=np.int64)
    for seg in corpus["segments"]:
        codes[seg["start"] : seg["stop"]] = seg["input"]
    return [c["input"] for c in corpus["inputs"]], codes
