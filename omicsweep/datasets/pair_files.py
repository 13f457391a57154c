"""Gene-pair label files: CNNC's `geneA<TAB>geneB<TAB>label` (+ `*_num.txt` data parts) and GGIPNN's split files.

CNNC (Yuan & Bar-Joseph 2019): one file of pairs, label 1 = A->B, 2 = the reversed pair, 0 = A with a random gene;
`<name>_num.txt` beside it lists the boundaries of its data parts (one TF or gene each), so cross-validation can
keep a part whole. GGIPNN (gene2vec, Du et al. 2019): a folder of `{train,valid,test}_text.txt` (`GENEA GENEB`) and
`{...}_label.txt` (0/1), whose split is given. Files may be xz- or gzip-compressed. Every malformed line is an
InputError naming the file and line.
"""

from __future__ import annotations

import gzip
import lzma
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omicsweep.errors import InputError

CNNC_CLASSES = ("none", "a_to_b", "b_to_a")  # labels 0, 1, 2
GGIPNN_CLASSES = ("no_interaction", "interaction")  # labels 0, 1
GGIPNN_SPLITS = ("train", "valid", "test")  # file prefixes, in the store's split order (valid = val)
COMPRESSED = (".xz", ".gz")


@dataclass
class PairFile:
    """Pairs as read: gene symbols as written, integer labels, and either data parts or a given split."""

    source: str
    format: str  # "cnnc" or "ggipnn"
    gene_a: np.ndarray
    gene_b: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    parts: np.ndarray | None = None  # data part per pair (CNNC)
    split_codes: np.ndarray | None = None  # 0 train, 1 val, 2 test per pair (GGIPNN)
    parts_source: str | None = None

    @property
    def n_pairs(self) -> int:
        return len(self.labels)


def _lines(path: Path) -> list[str]:
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read it as text ({type(exc).__name__}: {exc})") from None


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in ("", *COMPRESSED):
        candidate = folder / f"{stem}.txt{suffix}"
        if candidate.exists():
            return candidate
    return None


def default_parts_file(pairs: Path) -> Path:
    """CNNC's naming: bone_marrow_gene_pairs_200.txt(.xz) -> bone_marrow_gene_pairs_200_num.txt (any compression)."""
    stem = pairs.name
    for suffix in COMPRESSED:
        stem = stem.removesuffix(suffix)
    stem = stem.removesuffix(".txt")
    return _find(pairs.parent, f"{stem}_num") or pairs.parent / f"{stem}_num.txt"


def _label(text: str, allowed: int, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < allowed:
        raise InputError(f"{where}: label {text!r} is not one of {', '.join(map(str, range(allowed)))}")
    return value


def read_cnnc_parts(path: Path, n_pairs: int) -> np.ndarray:
    """Part id per pair from a boundaries file (0, b1, ..., n_pairs; one integer a line)."""
    bounds = []
    for number, line in enumerate(_lines(path), start=1):
        if line.strip():
            try:
                bounds.append(int(line.strip()))
            except ValueError:
                raise InputError(f"{path}: line {number}: expected one integer boundary, got {line[:60]!r}") from None
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != n_pairs or np.any(np.diff(bounds) < 0):
        raise InputError(
            f"{path}: data-part boundaries must rise from 0 to the number of pairs ({n_pairs}); "
            f"got {len(bounds)} values from {bounds[0] if bounds else '-'} to {bounds[-1] if bounds else '-'}"
        )
    return np.repeat(np.arange(len(bounds) - 1, dtype=np.int32), np.diff(bounds))


def read_cnnc(path: Path, parts_file: Path | None = None) -> PairFile:
    gene_a, gene_b, labels = [], [], []
    for number, line in enumerate(_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}: line {number}"
        if len(fields) != 3:
            raise InputError(f"{where}: expected 'geneA<TAB>geneB<TAB>label', got {line[:60]!r}")
        gene_a.append(fields[0])
        gene_b.append(fields[1])
        labels.append(_label(fields[2], len(CNNC_CLASSES), where))
    if not labels:
        raise InputError(f"{path}: no gene pairs in the file")
    parts_path = Path(parts_file) if parts_file else default_parts_file(path)
    if not parts_path.exists():
        raise InputError(f"{path}: no data-part file {parts_path.name} beside it; pass --parts FILE "
                         "(CNNC's *_num.txt: part boundaries, one integer a line)")
    parts = read_cnnc_parts(parts_path, len(labels))
    return PairFile(str(path), "cnnc", np.array(gene_a), np.array(gene_b), np.array(labels, dtype=np.int64),
                    CNNC_CLASSES, parts=parts, parts_source=str(parts_path))


def read_ggipnn(folder: Path) -> PairFile:
    gene_a, gene_b, labels, splits = [], [], [], []
    for code, name in enumerate(GGIPNN_SPLITS):
        text, label = _find(folder, f"{name}_text"), _find(folder, f"{name}_label")
        if text is None or label is None:
            raise InputError(f"{folder}: expected {name}_text.txt and {name}_label.txt (GGIPNN pair folder)")
        pairs, values = _lines(text), [v for v in _lines(label) if v.strip()]
        pairs = [p for p in pairs if p.strip()]
        if len(pairs) != len(values):
            raise InputError(f"{text}: {len(pairs)} pairs but {label.name} has {len(values)} labels")
        for number, (line, value) in enumerate(zip(pairs, values), start=1):
            fields = line.split()
            if len(fields) != 2:
                raise InputError(f"{text}: line {number}: expected 'GENEA GENEB', got {line[:60]!r}")
            gene_a.append(fields[0])
            gene_b.append(fields[1])
            labels.append(_label(value.strip(), len(GGIPNN_CLASSES), f"{label}: line {number}"))
            splits.append(code)
    return PairFile(str(folder), "ggipnn", np.array(gene_a), np.array(gene_b), np.array(labels, dtype=np.int64),
                    GGIPNN_CLASSES, split_codes=np.array(splits, dtype=np.int8))


def read_pairs(path: Path, *, parts_file: Path | None = None) -> PairFile:
    """A CNNC pair file (with its data parts) or a GGIPNN folder (with its given split)."""
    path = Path(path)
    if path.is_dir():
        if parts_file is not None:
            raise InputError(f"{path}: --parts applies to a CNNC pair file, not a GGIPNN folder (its split is given)")
        return read_ggipnn(path)
    return read_cnnc(path, parts_file)
