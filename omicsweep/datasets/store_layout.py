"""How a store lays out X on disk: chunk and shard sizes, compressor, index dtype and row order.

The layout of a store written since format 2 is recorded in `uns/omicsweep/layout`; a store without it was
written by the first writer (one zstd chunk of ~1,024 rows' worth of values per file, int32 gene indices, rows in
split order) and reads the same way: zarr decodes either layout, the loader only sees CSR rows.

Why the default (measured on the loader benchmark, perf/RESULTS.md): X's data/indices are cut into small chunks of
`chunk_rows` rows' worth of the store's own mean non-zeros per row, packed `shard_rows // chunk_rows` to a shard
(one file), so a read of a few rows decodes at most two chunks it does not need, and a read of a shard's rows is one
file; lz4 (blosc, byte shuffle) decodes faster than zstd at the same size on these values. uint16 gene indices are an
option, not the default: anndata reads them as uint16 scipy indices, which scanpy's PCA refuses.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

import numpy as np

from omicsweep.errors import ConfigError

COMPRESSORS = ("zstd", "lz4")
ROW_ORDERS = ("split", "shuffled")  # split: input order within each split; shuffled: permuted once with the seed
ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"
ZARRS_ENV = "OMICSWEEP_ZARRS"  # 0: keep zarr-python's own codec pipeline (for benchmarks and debugging)
LAYOUT_VERSION = 2
_log = logging.getLogger(__name__)
_pipeline_chosen: list[str] = []


@dataclass(frozen=True)
class StoreLayout:
    """X's on-disk layout. chunk_rows / shard_rows: rows' worth of values per chunk and per shard (shard_rows=None:
    no shards, one chunk per file as the first writer did); compressor: one of COMPRESSORS; small_indices: gene
    indices in uint16 when there are at most 65,536 genes; row_order, seed: see ROW_ORDERS."""

    chunk_rows: int = 32
    shard_rows: int | None = 1024
    compressor: str = "lz4"
    small_indices: bool = False  # uint16 on disk: anndata hands scanpy uint16 indices that its PCA refuses
    row_order: str = "split"
    seed: int = 0
    recorded: bool = True  # False only for LEGACY_LAYOUT: it writes the first writer's metadata too

    def check(self, option: str = "--layout") -> "StoreLayout":
        if self.compressor not in COMPRESSORS:
            raise ConfigError(f"{option}: compressor {self.compressor!r}; expected one of {', '.join(COMPRESSORS)}")
        if self.row_order not in ROW_ORDERS:
            raise ConfigError(f"{option}: row order {self.row_order!r}; expected one of {', '.join(ROW_ORDERS)}")
        if self.chunk_rows < 1 or (self.shard_rows is not None and self.shard_rows % self.chunk_rows):
            raise ConfigError(f"{option}: shard rows ({self.shard_rows}) must be a multiple of chunk rows "
                              f"({self.chunk_rows})")
        return self

    def index_dtype(self, n_genes: int) -> str:
        return "uint16" if self.small_indices and n_genes <= 1 << 16 else "int32"

    def codecs(self, dtype: str) -> list:
        from zarr.codecs import BloscCodec, ZstdCodec

        if self.compressor == "lz4":
            return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=np.dtype(dtype).itemsize)]
        return [ZstdCodec(level=3)]

    def value_counts(self, nnz_per_row: int) -> tuple[int, int | None]:
        """(values per chunk, values per shard or None) for a store of `nnz_per_row` mean non-zeros per row."""
        chunk = max(1, int(nnz_per_row)) * self.chunk_rows
        return chunk, None if self.shard_rows is None else chunk * (self.shard_rows // self.chunk_rows)

    def meta(self, nnz_per_row: int, n_genes: int) -> dict:
        return {**asdict(self), "version": LAYOUT_VERSION, "nnz_per_row": int(nnz_per_row),
                "index_dtype": self.index_dtype(n_genes)}


# the first writer's layout (format 1): 1,024 rows' worth of values per unsharded chunk, int32 indices
LEGACY_LAYOUT = StoreLayout(chunk_rows=1024, shard_rows=None, compressor="zstd", small_indices=False, recorded=False)
DEFAULT_LAYOUT = StoreLayout()


def parse_layout(spec: str | None, *, seed: int = 0, option: str = "--layout") -> StoreLayout:
    """'shuffled', 'split', 'lz4', 'zstd', 'uint16', 'int32', 'legacy' (the first writer's chunks) or several of them
    comma-separated ('shuffled,zstd') as a checked layout."""
    layout = StoreLayout(seed=seed)
    for word in [w.strip().lower() for w in (spec or "").split(",") if w.strip()]:
        if word in ROW_ORDERS:
            layout = StoreLayout(**{**asdict(layout), "row_order": word})
        elif word in COMPRESSORS:
            layout = StoreLayout(**{**asdict(layout), "compressor": word})
        elif word in ("uint16", "int32"):
            layout = StoreLayout(**{**asdict(layout), "small_indices": word == "uint16"})
        elif word == "legacy":
            layout = StoreLayout(**{**asdict(LEGACY_LAYOUT), "row_order": layout.row_order, "seed": seed})
        else:
            raise ConfigError(f"{option} {spec!r}: unknown word {word!r}; use {', '.join(ROW_ORDERS + COMPRESSORS)}, "
                              "uint16, int32 or legacy, comma-separated")
    return layout.check(option)


def row_order(group: np.ndarray, layout: StoreLayout) -> np.ndarray:
    """The stored order of input rows: grouped by `group` (split or fold), within a group input order, or a
    seeded permutation for a shuffled layout."""
    group = np.asarray(group)
    if layout.row_order == "shuffled":
        return np.lexsort((np.random.default_rng(layout.seed).permutation(len(group)), group))
    return np.argsort(group, kind="stable")


def configure_codec_pipeline() -> str:
    """Decode with zarrs (Rust, multithreaded, releases the GIL) unless $OMICSWEEP_ZARRS=0 or zarrs is missing, in
    which case zarr's own pipeline is kept and one line says so. Returns the pipeline's path; runs once."""
    if _pipeline_chosen:
        return _pipeline_chosen[0]
    import zarr

    path = zarr.config.get("codec_pipeline.path")
    if os.environ.get(ZARRS_ENV, "1") != "0":
        try:
            import zarrs  # noqa: F401

            path = ZARRS_PIPELINE
            zarr.config.set({"codec_pipeline.path": path})
        except ImportError as exc:
            _log.warning("zarrs is not installed (%s): decoding with zarr's own codec pipeline", exc)
    _pipeline_chosen.append(path)
    return path


def read_ranges(array, spans: list[tuple[int, int]]) -> list[np.ndarray]:
    """array[lo:hi] for every (lo, hi) of `spans`, read concurrently in one trip through zarr's event loop (zarrs
    decodes the chunks in parallel): many small reads cost about one large one (3.5x faster than reading the 64-row
    ranges of a shuffle buffer one by one, measured on the 100k benchmark store)."""
    import asyncio

    from zarr.core.sync import sync

    async def gather():
        return await asyncio.gather(*[array._async_array.getitem(slice(lo, hi)) for lo, hi in spans])

    return [np.asarray(values) for values in sync(gather())]
