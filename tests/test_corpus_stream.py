"""TokenStream: scBERT tokens streamed block by block from a corpus store, shuffled, sharded, resumable."""

from __future__ import annotations

import pytest
import torch

from omicsweep.datasets.corpus_stream import TokenStream, split_row_ranges
from omicsweep.datasets.open import open_store
from omicsweep.datasets.synth import write_synthetic
from omicsweep.datasets.tokens import expression_tokens
from omicsweep.errors import InputError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "corpus.zarr"
    vocab = out.parent / "vocab.txt"
    vocab.write_text("\n".join(f"G{i}" for i in range(200)) + "\n")
    write_synthetic(out, cells=410, genes=200, nnz_per_cell=40, vocab=vocab, fractions=(0.8, 0.2, 0.0))
    return out


class ReadLog:
    """The store, recording every row range read (to check what the stream touches)."""

    def __init__(self, store):
        self._store, self.reads = store, []

    def __getattr__(self, name):
        return getattr(self._store, name)

    def read_rows(self, start, stop):
        self.reads.append((start, stop))
        return self._store.read_rows(start, stop)


def _row_keys(tokens: torch.Tensor) -> list[bytes]:
    return [row.numpy().tobytes() for row in tokens]


def _split_tokens(path, split):
    store = open_store(path)
    rows = store.split_indices(split)
    return _row_keys(expression_tokens(store.read_rows(int(rows[0]), int(rows[-1]) + 1)))


def test_an_epoch_yields_each_train_cell_once_as_scbert_tokens(corpus):
    stream = TokenStream(corpus, "train", batch_size=16, seed=3, block_rows=50)
    batches = list(stream)
    assert len(batches) == 328 // 16 == len(TokenStream(corpus, batch_size=16, seed=3, block_rows=50))
    assert all(b.dtype == torch.long and b.shape == (16, 201) for b in batches)
    seen = _row_keys(torch.cat(batches))
    assert len(set(seen)) == len(seen) and set(seen) <= set(_split_tokens(corpus, "train"))
    assert stream.state_dict()["epoch"] == 1 and stream.state_dict()["batch"] == 0
    assert _row_keys(torch.cat(batches[:3])) != _split_tokens(corpus, "train")[:48]  # shuffled, not store order


def test_the_order_is_a_function_of_seed_and_epoch(corpus):
    first = TokenStream(corpus, batch_size=16, seed=3, block_rows=50)
    epoch0, epoch1 = torch.cat(list(first)), torch.cat(list(first))
    assert torch.equal(epoch0, torch.cat(list(TokenStream(corpus, batch_size=16, seed=3, block_rows=50))))
    assert not torch.equal(epoch0, epoch1)
    assert not torch.equal(epoch0, torch.cat(list(TokenStream(corpus, batch_size=16, seed=4, block_rows=50))))


def test_ranks_get_disjoint_shards_of_equal_length(corpus):
    shards = [list(TokenStream(corpus, batch_size=8, seed=1, rank=r, world_size=3, block_rows=40)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) > 0
    keys = [set(_row_keys(torch.cat(s))) for s in shards]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])


def test_a_resumed_stream_continues_at_the_same_place_across_epochs(corpus):
    reference = TokenStream(corpus, batch_size=16, seed=7, block_rows=30, rank=1, world_size=2)
    expected = [b for _ in range(3) for b in reference]  # three epochs
    per_epoch = len(expected) // 3
    for stop in (0, 5, per_epoch - 1, per_epoch, per_epoch + 4):
        live = TokenStream(corpus, batch_size=16, seed=7, block_rows=30, rank=1, world_size=2)
        consumed = []
        while len(consumed) < stop:
            for batch in live:
                consumed.append(batch)
                if len(consumed) == stop:
                    break
        resumed = TokenStream(ReadLog(open_store(corpus)), batch_size=16, seed=7, block_rows=30, rank=1,
                              world_size=2)
        resumed.load_state_dict(live.state_dict())
        rest = [b for _ in range(3 - resumed.epoch) for b in resumed]
        assert [torch.equal(a, b) for a, b in zip(consumed + rest, expected)] == [True] * len(expected), stop
        assert len(consumed + rest) == len(expected)


def test_memory_is_one_block_and_skipped_blocks_are_not_read(corpus):
    log = ReadLog(open_store(corpus))
    stream = TokenStream(log, batch_size=8, seed=0, block_rows=32)
    stream.load_state_dict({"epoch": 0, "batch": 30})  # 240 rows in: 7 whole blocks skipped
    list(stream)
    assert all(stop - start <= 32 for start, stop in log.reads)
    assert sum(stop - start for start, stop in log.reads) < 328 - 7 * 32 + 32


def test_validation_keeps_store_order_and_every_cell(corpus):
    stream = TokenStream(corpus, "val", batch_size=16, seed=0, shuffle=False)
    batches = list(stream)
    assert _row_keys(torch.cat(batches)) == _split_tokens(corpus, "val")
    assert batches[-1].shape[0] == 82 - 16 * 5
    capped = list(TokenStream(corpus, "val", batch_size=16, seed=0, shuffle=False, max_cells=20))
    assert sum(b.shape[0] for b in capped) == 20


def test_split_ranges_and_bad_positions(corpus):
    store = open_store(corpus)
    assert split_row_ranges(store, "train") == [(0, 328)] and split_row_ranges(store, "val", 10) == [(328, 338)]
    with pytest.raises(InputError, match="test split has no cells"):
        TokenStream(store, "test", batch_size=4, seed=0)
    stream = TokenStream(store, batch_size=4, seed=0, world_size=2)
    with pytest.raises(InputError, match="world_size=4"):
        stream.load_state_dict({"epoch": 0, "batch": 1, "world_size": 4, "seed": 0})


def test_a_small_split_still_feeds_every_rank(corpus):
    """328 train cells in one default block would leave rank 1 of 2 nothing: blocks shrink to 4 per rank."""
    shards = [TokenStream(corpus, batch_size=8, seed=0, rank=r, world_size=2) for r in range(2)]
    assert shards[0].block_rows == 328 // 8 and len(shards[0]) == len(shards[1]) > 0
    assert len(list(shards[1])) == len(shards[1])
