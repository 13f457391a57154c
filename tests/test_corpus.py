"""Pretraining corpus (many inputs onto one vocabulary) and gene2vec, on the shared human PBMC data."""

import json

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from conftest import SHARED_DATA, assert_one_line_error
from omicsweep.datasets.corpus import PLACEHOLDER_CLASS, build_corpus, corpus_sources, read_vocabulary
from omicsweep.datasets.ingest import ingest_file
from omicsweep.datasets.open import open_store
from omicsweep.datasets.tokens import expression_tokens
from omicsweep.errors import InputError
from omicsweep.models.gene2vec import nearest_genes, read_gene2vec, train_gene2vec

PBMC3K = SHARED_DATA / "pbmc3k_labelled" / "pbmc3k_labelled.h5ad"
ZHENG = SHARED_DATA / "zheng2017_sorted_pbmc_subsample" / "zheng2017_sorted_pbmc_2140.h5ad"
GENE2VEC_VOCAB = SHARED_DATA / "gene2vec_ggipnn_pairs" / "gene2vec_gene_vocabulary_24447.txt"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "corpus.zarr"
    return out, build_corpus([PBMC3K, ZHENG], GENE2VEC_VOCAB, out, seed=0)


@pytest.mark.shared_data
def test_corpus_on_the_gene2vec_vocabulary(corpus):
    out, summary = corpus
    pbmc, zheng = summary["inputs"]
    assert (pbmc["vocab_genes_found"], pbmc["input_genes_matched"], pbmc["input_genes"]) == (12359, 12359, 13714)
    assert (zheng["vocab_genes_found"], zheng["input_genes"]) == (8527, 8863)
    assert 0.96 < pbmc["counts_kept_fraction"] < 0.97 and pbmc["value_kind"] == "counts"
    store = open_store(out)
    assert store.n_genes == 24447 and store.n_cells == 2638 + 2140 == summary["cells"]
    assert store.classes == [PLACEHOLDER_CLASS]
    assert store.provenance["corpus"]["inputs"] == summary["inputs"]  # coverage recorded in the store
    val = store.split_indices("val")
    assert len(val) == 132 + 107 and len(store.split_indices("test")) == 0
    assert val.min() == store.n_cells - len(val)  # train rows first, then val: each split streams in order
    names, source = corpus_sources(store)
    assert names == [str(PBMC3K), str(ZHENG)] and np.bincount(source).tolist() == [2638, 2140]
    assert (source[val] == 0).sum() == 132
    # a cell's counts land on the vocabulary columns of its genes
    adata = ad.read_h5ad(PBMC3K)
    ids = store.cell_ids()
    row = int(np.flatnonzero(ids == f"0:{adata.obs_names[5]}")[0])
    vocab = read_vocabulary(GENE2VEC_VOCAB)
    stored = store.read_rows(row, row + 1).toarray()[0]
    for gene in ("CD3E", "LYZ", "MALAT1"):
        assert stored[vocab.index(gene)] == adata[5, gene].X.toarray()[0, 0]
    tokens = expression_tokens(store.read_rows(0, 8))
    assert tokens.shape == (8, 24448) and int(tokens.max()) <= 5


@pytest.mark.shared_data
def test_exclude_test_of_a_store_leaves_its_test_cells_out(tmp_path):
    small = tmp_path / "pbmc3k.h5ad"
    ad.read_h5ad(PBMC3K)[:600].write_h5ad(small)
    store_path = tmp_path / "pbmc3k.zarr"
    ingest_file(small, label_col="cell_type", out=store_path)
    store = open_store(store_path)
    test_ids = set(store.cell_ids()[store.split_indices("test")])
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(store.genes()[:2000]) + "\n")
    for inputs in ([small], [store_path]):  # the ingested file, or the store itself
        out = tmp_path / f"corpus-{inputs[0].suffix[1:]}.zarr"
        summary = build_corpus(inputs, vocab, out, exclude_test_of=store_path)
        kept = {cid.split(":", 1)[1] for cid in open_store(out).cell_ids()}
        assert summary["inputs"][0]["excluded_test_cells"] == len(test_ids) > 0
        assert not kept & test_ids and len(kept) == 600 - len(test_ids)
    with pytest.raises(InputError, match="none of the inputs is this store or its source"):
        build_corpus([ZHENG], vocab, tmp_path / "other.zarr", exclude_test_of=store_path)


@pytest.mark.shared_data
def test_vocabulary_and_overlap_errors_leave_nothing(tmp_path, cli):
    dup = tmp_path / "dup.txt"
    dup.write_text("CD3E\nLYZ\nCD3E\n")
    code, stdout, stderr = cli("corpus", "build", PBMC3K, "--vocab", dup, "--out", tmp_path / "c.zarr")
    assert_one_line_error(code, stdout, stderr, str(dup), "'CD3E' appears twice", "lines 1 and 3")
    cases = tmp_path / "cases.txt"
    cases.write_text("IGK\nIgk\nCD3E\n")  # case variants (as in the gene2vec list) are distinct entries
    assert read_vocabulary(cases) == ["IGK", "Igk", "CD3E"]
    alien = tmp_path / "alien.txt"
    alien.write_text("NOT_A_GENE_1\nNOT_A_GENE_2\n")
    code, stdout, stderr = cli("corpus", "build", ZHENG, "--vocab", alien, "--out", tmp_path / "c.zarr")
    assert_one_line_error(code, stdout, stderr, str(ZHENG), "none of its 8863 genes", "gene symbols")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alien.txt", "cases.txt", "dup.txt"]


def test_genes_match_case_insensitively_and_duplicates_add_up(tmp_path):
    counts = sp.csr_matrix(np.array([[1, 2, 3, 4], [0, 5, 0, 6]], dtype=np.float32))
    adata = ad.AnnData(counts, var={"x": [0, 1, 2, 3]})
    adata.var_names = ["cd3e", "Lyz", "LYZ", "GENE_X"]
    adata.obs_names = ["a", "b"]
    path = tmp_path / "tiny.h5ad"
    adata.write_h5ad(path)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("LYZ\nMS4A1\nCD3E\n")
    summary = build_corpus([path], vocab, tmp_path / "tiny.zarr", split=(1.0, 0.0))
    np.testing.assert_array_equal(open_store(tmp_path / "tiny.zarr").read_rows(0, 2).toarray(), [[5, 0, 1], [5, 0, 0]])
    item = summary["inputs"][0]
    assert (item["vocab_genes_found"], item["input_genes_matched"]) == (2, 3)
    assert item["counts_kept_fraction"] == pytest.approx(11 / 21)


@pytest.mark.shared_data
@pytest.mark.slow
def test_gene2vec_on_the_corpus_and_reading_it_back(corpus, tmp_path, cli):
    out, _ = corpus
    g2v = tmp_path / "g2v.txt"
    code, stdout, stderr = cli("gene2vec", "--corpus", out, "--out", g2v, "--dim", "64", "--max-genes", "2048",
                                "--epochs", "15")
    assert code == 0, stderr
    assert "CD3E:" in stdout and "MS4A1:" in stdout
    sidecar = json.loads((tmp_path / "g2v.txt.json").read_text())
    assert sidecar["threshold"] == 0.2 and sidecar["word2vec"]["window"] == 1 and sidecar["word2vec"]["sg"] == 1
    header = g2v.read_text().splitlines()[0].split()
    assert header == [str(sidecar["genes_embedded"]), "64"]
    assert "CD3D" in [g for g, _ in nearest_genes(g2v, "CD3E", k=5)]  # the CD3 complex co-expresses
    assert {"CD79A", "CD79B"} & {g for g, _ in nearest_genes(g2v, "MS4A1", k=5)}
    vocab = read_vocabulary(GENE2VEC_VOCAB)
    matrix, coverage = read_gene2vec(g2v, vocab, dim=64)
    assert matrix.shape == (24448, 64) and coverage["covered"] == sidecar["genes_embedded"]
    assert not matrix[-1].any()  # the appended position has no gene
    again = tmp_path / "again.txt"
    train_gene2vec(out, again, dim=64, max_genes=2048, epochs=15)
    assert again.read_text() == g2v.read_text()  # same seed, same embeddings


def test_read_gene2vec_rejects_wrong_dimension_and_format(tmp_path):
    good = tmp_path / "g.txt"
    good.write_text("CD3E 0.1 0.2 0.3\ncd14 1 2 3\n")  # the published file has no header line
    matrix, coverage = read_gene2vec(good, ["CD14", "CD3E", "LYZ"], dim=3)
    np.testing.assert_allclose(matrix[:3], [[1, 2, 3], [0.1, 0.2, 0.3], [0, 0, 0]], rtol=1e-6)
    assert coverage["covered"] == 2 and coverage["fraction"] == pytest.approx(2 / 3)
    with pytest.raises(InputError, match=r"g\.txt: gene2vec vectors have 3 dimensions; the model's dim is 200"):
        read_gene2vec(good, ["CD3E"], dim=200)
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("CD3E 0.1 0.2 0.3\nCD14 1 2\n")
    with pytest.raises(InputError, match="line 2 has 2 values, expected 3"):
        read_gene2vec(ragged, ["CD3E"])
    words = tmp_path / "words.txt"
    words.write_text("CD3E a b\n")
    with pytest.raises(InputError, match="line 1 is not '<gene> <numbers>'"):
        read_gene2vec(words, ["CD3E"])


@pytest.mark.shared_data
def test_synth_writes_a_corpus_on_a_vocabulary(tmp_path, cli):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(read_vocabulary(GENE2VEC_VOCAB)[:300]) + "\n")
    out = tmp_path / "synth.zarr"
    code, stdout, stderr = cli("datasets", "synth", "--out", out, "--cells", "400", "--nnz", "40", "--vocab", vocab)
    assert code == 0, stderr
    store = open_store(out)
    assert store.genes().tolist() == read_vocabulary(vocab)
    assert len(store.split_indices("test")) == 0 and len(store.split_indices("val")) == 20  # a corpus: train/val
    assert store.provenance["vocabulary"] == str(vocab)
    assert expression_tokens(store.read_rows(0, 4)).shape == (4, 301)


def _tiny_h5ad(path, genes, cells=30, seed=0):
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (cells, len(genes))).astype(np.float32)))
    adata.var_names, adata.obs_names = list(genes), [f"c{i}" for i in range(cells)]
    adata.write_h5ad(path)
    return path


def test_inputs_without_gene_symbols_say_what_they_have(tmp_path, cli):
    import h5py

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("CD3E\nLYZ\nMS4A1\n")
    plain = tmp_path / "plain.h5"  # a plain HDF5 matrix: the reader makes up gene_0, gene_1, ...
    with h5py.File(plain, "w") as f:
        f["X"] = np.random.default_rng(0).poisson(1.0, (20, 5)).astype(np.float32)
        f["Y"] = np.zeros(20, dtype=np.int64)
    code, stdout, stderr = cli("corpus", "build", plain, "--vocab", vocab, "--out", tmp_path / "c.zarr")
    assert_one_line_error(code, stdout, stderr, str(plain), "has no gene names", "gene_0")
    ensembl = _tiny_h5ad(tmp_path / "ensembl.h5ad", ["ENSG00000198851", "ENSG00000090382", "ENSG00000156738"])
    code, stdout, stderr = cli("corpus", "build", ensembl, "--vocab", vocab, "--out", tmp_path / "c.zarr")
    assert_one_line_error(code, stdout, stderr, str(ensembl), "Ensembl ids", "gene symbols")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ensembl.h5ad", "plain.h5", "vocab.txt"]


@pytest.fixture
def tiny_corpus(tmp_path):
    genes = [f"G{i}" for i in range(12)]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(genes) + "\n")
    out = tmp_path / "tiny.zarr"
    build_corpus([_tiny_h5ad(tmp_path / "tiny.h5ad", genes, cells=60)], vocab, out)
    return out


def test_gene2vec_reads_a_user_file_and_rejects_a_wrong_dimension_or_format(tiny_corpus, tmp_path, cli):
    good = tmp_path / "user.txt"
    good.write_text("G0 1 0 0\nG1 0.9 0.1 0\ng2 0 1 0\nOTHER 0 0 1\n")  # lower-case g2 matches G2
    code, stdout, stderr = cli("gene2vec", "--corpus", tiny_corpus, "--embeddings", good, "--dim", "3",
                               "--neighbours", "G0")
    assert code == 0, stderr
    assert "3 of 12 vocabulary genes have a vector (25.0%)" in stdout
    assert "G0: G1 0.99" in stdout
    wide = tmp_path / "wide.txt"
    wide.write_text("G0 1 2 3 4\nG1 1 2 3 4\n")
    code, stdout, stderr = cli("gene2vec", "--corpus", tiny_corpus, "--embeddings", wide, "--dim", "200")
    assert_one_line_error(code, stdout, stderr, str(wide), "4 dimensions", "dim is 200")
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"2 3\nG0 " + np.array([0.5, 0.0, -1.0], "<f4").tobytes() + b"\nG1 "
                       + np.array([1e-3, 7.0, 2.0], "<f4").tobytes())  # word2vec's binary format
    code, stdout, stderr = cli("gene2vec", "--corpus", tiny_corpus, "--embeddings", binary, "--dim", "3")
    assert_one_line_error(code, stdout, stderr, str(binary), "is binary", "word2vec text format")
    assert not list(tmp_path.glob("*.json"))  # reading a user file writes nothing


def test_gene2vec_neighbours_option_and_threshold_recorded(tiny_corpus, tmp_path, cli):
    out = tmp_path / "g2v.txt"
    code, stdout, stderr = cli("gene2vec", "--corpus", tiny_corpus, "--out", out, "--dim", "8", "--epochs", "2",
                               "--threshold", "-0.5", "--min-cells", "2", "--neighbours", "G0,NOPE")
    assert code == 0, stderr
    assert "correlation > -0.5" in stdout and "  G0: " in stdout and "NOPE: (no vector" in stdout
    assert json.loads((tmp_path / "g2v.txt.json").read_text())["threshold"] == -0.5


def test_a_table_given_as_vocabulary_is_refused(tmp_path, cli):
    table = tmp_path / "landmarks.tsv"  # e.g. the L1000 landmark table: several columns a line
    table.write_text("pr_gene_symbol\tpr_gene_id\nCD3E\t916\nLYZ\t4069\n")
    code, stdout, stderr = cli("corpus", "build", table, "--vocab", table, "--out", tmp_path / "c.zarr")
    assert_one_line_error(code, stdout, stderr, str(table), "line 1 has 2 fields", "one gene symbol a line")
    assert not (tmp_path / "c.zarr").exists()
