"""Gene graphs (datasets/graphs.py) and the gcn_smooth model that smooths over them (models/gcn_smooth.py)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, assert_one_line_error
from omicsweep.datasets.graphs import align_graph, load_gene_graph, read_edge_list
from omicsweep.errors import InputError
from omicsweep.models import Task, get_model

STRING = SHARED_DATA / "string_v12_human_ppi"
GENES = ("CD3E", "cd3d", "LCK", "ZAP70", "MS4A1", "CD19", "NOTINGRAPH")  # store order; one lower-case symbol
EDGES = [  # symbol_a, symbol_b, combined_score; STRING-like columns, unordered, a duplicate and a self-loop
    ("CD3E", "CD3D", 900), ("CD3D", "CD3E", 700), ("LCK", "zap70", 800), ("CD3E", "LCK", 500),
    ("MS4A1", "CD19", 1000), ("CD19", "CD19", 999), ("CD19", "PAX5", 600), ("FOO", "BAR", 400),
]


def write_edges(path, edges=EDGES, header=("symbol_a", "symbol_b", "combined_score")):
    text = "\t".join(header) + "\n" + "".join("\t".join(map(str, e)) + "\n" for e in edges)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def edge_file(tmp_path):
    return write_edges(tmp_path / "edges.tsv.gz")


def test_alignment_by_symbol_normalises_by_the_files_max_and_reports_coverage(edge_file):
    graph = load_gene_graph(edge_file, GENES, diagonal=0)
    dense = graph.adjacency.toarray()
    assert dense.shape == (7, 7) and np.array_equal(dense, dense.T)
    assert dense[0, 1] == pytest.approx(0.9)  # the pair's highest score of its two listings, / max 1000
    assert dense[2, 3] == pytest.approx(0.8)  # LCK-zap70 matched case-insensitively
    assert dense[0, 2] == pytest.approx(0.5) and dense[4, 5] == pytest.approx(1.0)
    assert np.count_nonzero(dense) == 8 and np.all(np.diag(dense) == 0)  # the self-loop is dropped
    cov = graph.coverage
    assert (cov.n_genes, cov.genes_in_graph, cov.genes_connected) == (7, 6, 6)
    assert (cov.edges_kept, cov.edges_total, cov.graph_nodes) == (4, 6, 9)
    assert "6 of 7 genes" in cov.describe(edge_file) and "4 of 6 edges" in cov.describe(edge_file)
    assert graph.connected.tolist() == [0, 1, 2, 3, 4, 5]
    with_self = load_gene_graph(edge_file, GENES, diagonal=1).adjacency.toarray()
    assert np.all(np.diag(with_self) == 1) and np.array_equal(with_self - np.eye(7), dense)


def test_entrez_edge_lists_map_to_symbols_through_nodes_tsv(tmp_path):
    write_edges(tmp_path / "edges.tsv", [(916, 915, 900), (3932, 7535, 450)], header=("entrez_a", "entrez_b", "score"))
    (tmp_path / "nodes.tsv").write_text("entrez\tsymbol\n916\tCD3E\n915\tCD3D\n3932\tLCK\n7535\tZAP70\n")
    graph = load_gene_graph(tmp_path, GENES)  # a folder: its one edge list (nodes.tsv is not one)
    dense = graph.adjacency.toarray()
    assert dense[0, 1] == pytest.approx(1.0) and dense[2, 3] == pytest.approx(0.5)
    assert graph.coverage.edges_kept == 2


@pytest.mark.shared_data
def test_string_v12_folder_on_the_pbmc68k_genes(pbmc_store):
    from omicsweep.datasets import Store

    genes = list(Store(pbmc_store).genes())
    graph = load_gene_graph(STRING, genes)
    cov = graph.coverage
    assert (cov.edges_total, cov.graph_nodes, cov.n_genes) == (174_962, 17_288, len(genes))  # SOURCE.md's counts
    assert 0 < cov.genes_connected <= cov.genes_in_graph < cov.n_genes and cov.edges_kept > 100
    values = graph.adjacency.data
    assert values.max() == pytest.approx(1.0) and values.min() >= 400 / 999 - 1e-6  # scores 400..999 / 999
    assert read_edge_list(STRING) is read_edge_list(STRING)  # parsed once per process


@pytest.mark.parametrize(
    "content, says",
    [
        ("symbol_a\tsymbol_b\tcombined_score\n", "header and rows"),
        ("symbol_a\tsymbol_b\tcombined_score\nCD3E\tCD3D\thigh\n", "non-numeric"),
        ("symbol_a\tsymbol_b\tcombined_score\nCD3E\tCD3D\t-3\n", "positive"),
        ("symbol_a\tsymbol_b\tcombined_score\nFOO\tBAR\t5\n", "no edge"),
        (b"\x1f\x8b not gzip", "not a readable"),
    ],
)
def test_malformed_or_unmatched_edge_lists_are_input_errors(content, says, tmp_path):
    path = tmp_path / ("edges.tsv.gz" if isinstance(content, bytes) else "edges.tsv")
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(InputError, match=says) as info:
        load_gene_graph(path, GENES)
    assert str(path) in str(info.value)


def test_a_changed_graph_file_is_refused_against_the_recorded_hash(edge_file):
    graph = load_gene_graph(edge_file, GENES)
    write_edges(edge_file, EDGES[:-1])
    with pytest.raises(InputError, match="changed"):
        load_gene_graph(edge_file, GENES, expect_sha256=graph.sha256)


# ---- gcn_smooth ----------------------------------------------------------------------------------------------


def _model(graph, **overrides):
    config = {"graph": None if graph is None else str(graph), "graph_diagonal": 0, "graph_norm": "max",
              "input_genes": "all", "gene_dim": 3, "individual_k": 2, "key_dim": 2, "n_layers": 1, "size_1": 8,
              "dropout": 0.0, **overrides}
    torch.manual_seed(0)
    model = get_model("gcn_smooth").build(config, Task(n_features=len(GENES), n_classes=3, genes=GENES)).eval()
    torch.nn.init.normal_(model.readout.weight)  # zero at initialisation; as after some training
    return model


def test_global_smoothing_mixes_exactly_the_graph_neighbours(edge_file):
    model = _model(edge_file, individual_k=0)
    x = torch.rand(5, len(GENES))
    bumped = x.clone()
    bumped[:, 3] += 1.0  # ZAP70: its only neighbour is LCK (gene 2)
    with torch.no_grad():
        before, after = model.global_smoothing(model.gene_features(x)), model.global_smoothing(model.gene_features(bumped))
    changed = (after - before).abs().amax(dim=(1, 2)) > 1e-6
    assert changed.tolist() == [False, False, True, False, False, False, False]


def test_smoothing_changes_the_output_and_the_checkpoint_holds_learned_weights_only(edge_file):
    smoothed, plain = _model(edge_file), _model(None)
    assert set(smoothed.state_dict()) == set(plain.state_dict())  # the graph is rebuilt from the config
    plain.load_state_dict(smoothed.state_dict())
    x = torch.rand(6, len(GENES))
    with torch.no_grad():
        assert not torch.allclose(smoothed(x), plain(x))


def test_individual_graph_is_a_softmax_over_top_k_neighbours_with_bounded_memory(edge_file):
    model = _model(edge_file, individual_k=2)
    with torch.no_grad():
        weights = model.individual_graph(model.gene_features(torch.rand(10, len(GENES))))
    assert weights.shape == (6, 2, 10)  # graph genes x k x cells, not genes x genes per cell
    assert torch.allclose(weights.sum(dim=1), torch.ones(6, 10))
    assert torch.all(weights[4, 1] == 0) and torch.all(weights[4, 0] == 1)  # MS4A1: one neighbour, one slot masked
    assert model._graph["neighbours"][0].tolist() == [1, 2]  # CD3E: CD3D (0.9) before LCK (0.5)
    big = torch.rand(130, len(GENES))  # more cells than a chunk (128): same result as cell by cell
    with torch.no_grad():
        assert torch.allclose(model(big), torch.cat([model(big[i : i + 1]) for i in range(130)]), atol=1e-5)


def test_graph_genes_input_reads_only_connected_genes(edge_file):
    model = _model(edge_file, input_genes="graph")
    assert model.classifier[0].in_features == 6
    x = torch.rand(4, len(GENES))
    other = x.clone()
    other[:, 6] = 5.0  # NOTINGRAPH
    with torch.no_grad():
        assert torch.equal(model(x), model(other))


def test_prepare_pins_the_absolute_path_and_hash_and_build_refuses_unnamed_genes(edge_file, tmp_path, monkeypatch):
    from omicsweep.errors import ConfigError

    entry = get_model("gcn_smooth")
    monkeypatch.chdir(edge_file.parent)
    additions, notes = entry.prepared({"graph": edge_file.name}, Task(len(GENES), 3, genes=GENES))
    assert additions == {"graph": str(edge_file.resolve()), "graph_sha256": read_edge_list(edge_file).sha256}
    assert notes and "6 of 7 genes" in notes[0]
    with pytest.raises(ConfigError, match="gene names"):
        entry.build({"graph": str(edge_file), "n_layers": 1, "size_1": 8}, Task(n_features=len(GENES), n_classes=3))


def test_build_opens_no_file_the_graph_prepare_read_reaches_it_through_the_task(edge_file):
    entry = get_model("gcn_smooth")
    task = Task(n_features=len(GENES), n_classes=3, genes=GENES)
    base = {"graph_diagonal": 0, "graph_norm": "max", "input_genes": "graph", "gene_dim": 3, "individual_k": 2,
            "key_dim": 2, "n_layers": 1, "size_1": 8, "dropout": 0.0}
    additions, _ = entry.prepared({**base, "graph": str(edge_file)}, task)
    edge_file.unlink()  # prepare read it; neither the entry's build nor an ensemble of them reads it again
    config = {**base, **additions}
    model = entry.build(config, task)
    assert model.classifier[0].in_features == 6 and model._graph["neighbours"][0].tolist() == [1, 2]
    from omicsweep.models.ensemble import build_torch_model

    assert len(build_torch_model(entry, {**config, "ensemble": 2}, task).members) == 2
    graph = entry.load_priors(config, task)["graph"]
    assert graph.sha256 == additions["graph_sha256"]
    # the model's own builder takes the graph from the task and nothing else
    plain = entry.build.builder(config, Task(len(GENES), 3, genes=GENES, priors={"graph": graph}))
    assert plain.classifier[0].in_features == 6
    from omicsweep.errors import ConfigError

    with pytest.raises(ConfigError, match="not loaded"):
        entry.build.builder(config, task)


def test_sweep_with_an_unusable_graph_is_one_line_exit_2(cli, pbmc_store, tmp_path):
    bad = tmp_path / "edges.tsv"
    bad.write_text("symbol_a\tsymbol_b\tcombined_score\nFOO\tBAR\t5\n")
    out = tmp_path / "run"
    assert_one_line_error(*cli("sweep", "--model", "gcn_smooth", "--set", f"graph={bad}", "--runs", out), str(bad))
    assert_one_line_error(*cli("sweep", "--model", "gcn_smooth", "--set", f"graph={tmp_path / 'nope.tsv'}",
                               "--runs", out), "nope.tsv", "not found")
    assert_one_line_error(*cli("sweep", "--model", "gcn_smooth,mlp", "--set", "no_such_key=1", "--runs", out),
                          "no_such_key")
    assert not out.exists()


@pytest.mark.shared_data
@pytest.mark.slow
def test_train_with_string_records_the_graph_hash_reproduces_and_predicts(ray_session, pbmc_store, pbmc_h5ad, cli,
                                                                         tmp_path):
    from mlflow import MlflowClient

    from omicsweep.reports.tracking import default_tracking_uri

    out = tmp_path / "run"
    tiny = ["gene_dim=2", "individual_k=2", "key_dim=2", "n_layers=1", "size_1=16", "max_epochs=2", "batch_size=64"]
    args = [a for pair in tiny for a in ("--set", pair)]
    code, stdout, stderr = cli("train", "--model", "gcn_smooth", "--set", f"graph={STRING}", *args, "--runs", out)
    assert code == 0, stdout + stderr
    assert "genes" in stderr and "edges kept" in stderr  # the coverage line
    client = MlflowClient(default_tracking_uri(out))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [trial] = [r for r in runs if r.data.tags.get("omicsweep.role") == "trial"]
    assert trial.info.status == "FINISHED"
    assert trial.data.params["graph_sha256"] == read_edge_list(STRING).sha256
    assert trial.data.params["graph"].endswith(".tsv.gz")
    code, stdout, stderr = cli("reproduce", trial.info.run_id, "--runs", out)
    assert code == 0 and "match exactly" in stdout, stdout + stderr
    target = tmp_path / "labelled.h5ad"  # predict rebuilds the model with the store's genes and the same graph
    code, stdout, stderr = cli("predict", pbmc_h5ad, "--raw", "--run", trial.info.run_id, "--runs", out, "--out", target)
    assert code == 0 and "765 of 765" in stdout, stdout + stderr
