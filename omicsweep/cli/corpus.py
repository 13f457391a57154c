"""`omicsweep corpus build` and `omicsweep gene2vec`: the pretraining corpus and its gene embeddings (scBERT I)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from omicsweep.cli.common import Overwrite, say, user_errors
from omicsweep.errors import ConfigError, InputError

corpus_app = typer.Typer(no_args_is_help=True, help="Pretraining corpora on one gene vocabulary.")
MARKERS = ("CD3E", "MS4A1", "CD14", "NKG7")


def coverage_line(item: dict) -> str:
    note = "" if item["value_kind"] == "counts" else "  (values are not counts: scBERT tokens assume counts)"
    return (f"{item['input']}: {item['vocab_genes_found']} vocabulary genes found ({item['vocab_fraction']:.1%}), "
            f"{item['input_genes_matched']}/{item['input_genes']} input genes matched, "
            f"{item['counts_kept_fraction']:.1%} of counts kept; {item['kept_cells']} cells "
            f"({item['train']} train, {item['val']} val, {item['excluded_test_cells']} test cells left out){note}")


@corpus_app.command("build")
@user_errors
def corpus_build(
    inputs: List[Path] = typer.Argument(..., help="expression files (any format `ingest` reads) or stores"),
    vocab: Path = typer.Option(..., "--vocab", help="gene vocabulary: one symbol a line, in model order"),
    out: Path = typer.Option(..., "--out", help="corpus store to write (CORPUS.zarr)"),
    exclude_test_of: Optional[Path] = typer.Option(
        None, "--exclude-test-of", help="leave out the test cells of this store (a later fine-tuning test set)"),
    val_fraction: float = typer.Option(0.05, "--val-fraction", help="validation cells per input"),
    seed: int = typer.Option(0, help="split seed"),
    overwrite: Overwrite = False,
) -> None:
    """Assemble expression inputs onto one gene vocabulary as a pretraining corpus, chunk by chunk."""
    from omicsweep.datasets.corpus import build_corpus

    summary = build_corpus(inputs, vocab, out, exclude_test_of=exclude_test_of, split=(1 - val_fraction, val_fraction),
                           seed=seed, overwrite=overwrite, progress=lambda item: say(coverage_line(item)))
    say(f"wrote {out}: {summary['cells']} cells x {summary['vocabulary_genes']} genes, {summary['fingerprint']}")


def _say_neighbours(path: Path, genes: str, missing: str) -> None:
    from omicsweep.models.gene2vec import nearest_genes

    for gene in [g.strip() for g in genes.split(",") if g.strip()]:
        try:
            near = ", ".join(f"{g} {s:.2f}" for g, s in nearest_genes(path, gene, k=5))
        except InputError:  # a marker without a vector is reported, not fatal
            near = f"(no vector: {missing})"
        say(f"  {gene}: {near}")


def _check_user_file(corpus: Path, embeddings: Path, dim: int) -> None:
    """A user's gene2vec file aligned to the corpus's vocabulary: the coverage, or a one-line error."""
    from omicsweep.datasets.open import open_store
    from omicsweep.models.gene2vec import read_gene2vec

    _, coverage = read_gene2vec(embeddings, open_store(corpus).genes(), dim=dim)
    say(f"{embeddings}: {coverage['file_genes']} genes x {coverage['dim']}; {coverage['covered']} of "
        f"{coverage['vocab_genes']} vocabulary genes have a vector ({coverage['fraction']:.1%}), the rest are zero")


@user_errors
def gene2vec(
    corpus: Path = typer.Option(..., "--corpus", help="corpus store (omicsweep corpus build)"),
    out: Optional[Path] = typer.Option(None, "--out", help="embeddings to write (word2vec text format; <out>.json beside)"),
    embeddings: Optional[Path] = typer.Option(
        None, "--embeddings", help="instead of training: check a gene2vec file (e.g. the published 200-d one) against "
        "the corpus's vocabulary (coverage, --dim) and print neighbours from it"),
    dim: int = typer.Option(200, help="embedding dimension (scBERT: 200)"),
    threshold: Optional[float] = typer.Option(None, help="Pearson correlation above which two genes are a pair"),
    max_genes: int = typer.Option(4096, help="genes considered: those detected in the most training cells"),
    min_cells: int = typer.Option(10, help="genes considered: detected in at least this many training cells"),
    epochs: int = typer.Option(30, help="Word2Vec epochs"),
    seed: int = typer.Option(0, help="Word2Vec seed"),
    neighbours: str = typer.Option(",".join(MARKERS), "--neighbours", "--show",
                                   help="comma-separated genes whose 5 nearest neighbours (cosine) to print"),
) -> None:
    """Train gene2vec embeddings (skip-gram, window 1) on the corpus's co-expressed gene pairs, or check a user's."""
    if embeddings is not None:
        if out is not None:
            raise ConfigError(f"--out {out} with --embeddings {embeddings}: give one (train, or check a file)")
        _check_user_file(corpus, embeddings, dim)
        _say_neighbours(embeddings, neighbours, f"not in {embeddings}")
        return
    if out is None:
        raise ConfigError("gene2vec: give --out FILE to train embeddings (or --embeddings FILE to check one)")
    from omicsweep.models.gene2vec import DEFAULT_THRESHOLD, train_gene2vec

    info = train_gene2vec(corpus, out, dim=dim, threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
                          seed=seed, max_genes=max_genes, min_cells=min_cells, epochs=epochs)
    say(f"wrote {out}: {info['genes_embedded']} genes x {dim} from {info['pairs']} pairs "
        f"(correlation > {info['threshold']} among {info['genes_considered']} genes detected in {min_cells}+ of "
        f"{info['train_cells']} training cells; recorded in {out}.json)")
    _say_neighbours(out, neighbours, "not among the --max-genes most detected genes, or in no pair above --threshold")


COMMANDS = {"gene2vec": gene2vec}
