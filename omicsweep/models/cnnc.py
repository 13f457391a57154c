"""CNNC (Yuan & Bar-Joseph 2019): a small VGG-style CNN over gene-pair images, as in CNNC's public training script.

[Conv3x3 same -> ReLU -> Conv3x3 valid -> ReLU -> MaxPool 2 -> Dropout 0.25] x n_blocks (filters width, 2 width,
4 width: 32/64/128 by default) -> Flatten -> Dense 512 -> ReLU -> Dropout 0.5 -> classes. Binary tasks use two
logits with softmax cross-entropy, equivalent to CNNC's single sigmoid output.

Its featuriser (`PairImageFeaturiser`) makes the images: it reads a gene-pair task store as its pairs' CNNC
images at the trial's `bins` and `sigma` (`datasets.pair_images.PairImages`) and folds each batch's flat, scaled
rows into [batch, 1, bins, bins] under key "x".
"""

from __future__ import annotations

from typing import Any

from torch import nn

from omicsweep.errors import ConfigError
from omicsweep.models.base import ModelEntry, Task, register
from omicsweep.models.featurise import DENSE_KEY, Featuriser
from omicsweep.tasks import GENE_PAIR_IMAGE


def _block(c_in: int, c_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3), nn.ReLU(),  # 'valid': each block trims 2 pixels before pooling
        nn.MaxPool2d(2), nn.Dropout(dropout),
    )


def size_after_blocks(size: int, n_blocks: int) -> int:
    for _ in range(n_blocks):
        size = (size - 2) // 2
    return size


class CNNC(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], n_classes: int, *, n_blocks: int = 3, width: int = 32,
                 dense: int = 512, conv_dropout: float = 0.25, dropout: float = 0.5):
        super().__init__()
        channels, height, width_px = (int(v) for v in input_shape)
        self.shape = (channels, height, width_px)
        side = min(size_after_blocks(height, n_blocks), size_after_blocks(width_px, n_blocks))
        if n_blocks < 1 or side < 1:
            raise ConfigError(f"cnnc: n_blocks={n_blocks} does not fit {height}x{width_px} images "
                              "(each block needs (size - 2) // 2 >= 1); use fewer blocks or more bins")
        filters = [int(width) * 2**i for i in range(n_blocks)]
        self.features = nn.Sequential(*(_block(c_in, c_out, float(conv_dropout))
                                        for c_in, c_out in zip([channels, *filters[:-1]], filters)))
        flat = filters[-1] * size_after_blocks(height, n_blocks) * size_after_blocks(width_px, n_blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, int(dense)), nn.ReLU(), nn.Dropout(float(dropout)),
                                  nn.Linear(int(dense), n_classes))

    def forward(self, x):
        if x.dim() == 2:  # flat rows (SMOTE's in-memory batches, a caller without the featuriser)
            x = x.unflatten(1, self.shape)  # [b, c*h*w] -> [b, c, h, w]
        return self.head(self.features(x))


class PairImageFeaturiser(Featuriser):
    """Gene pairs -> CNNC images: the store's view at config `bins`/`sigma`, each batch as [b, 1, bins, bins]."""

    dense = True  # its one input is the transformed dense rows, folded: SMOTE may interpolate them

    def view(self, store, config):
        from omicsweep.datasets.pair_images import image_options

        imaged = getattr(store, "imaged", None)
        if not callable(imaged):
            raise ConfigError(f"cnnc: needs a {GENE_PAIR_IMAGE} task store (omicsweep ingest-pairs), not {store.path}")
        return imaged(**image_options(config))

    def __call__(self, batch, genes, transform):
        flat = super().__call__(batch, genes, transform)[DENSE_KEY]
        side = int(round(flat.shape[1] ** 0.5))
        return {DENSE_KEY: flat.reshape(len(flat), 1, side, side)}


def build(config: dict[str, Any], task: Task) -> nn.Module:
    if task.kind != GENE_PAIR_IMAGE or len(task.input_shape) != 3:
        raise ConfigError(f"cnnc: needs a {GENE_PAIR_IMAGE} task with (channels, bins, bins) inputs, got {task.kind} "
                          f"{task.input_shape}")
    return CNNC(
        task.input_shape, task.n_classes, n_blocks=int(config["n_blocks"]), width=int(config["width"]),
        dense=int(config["dense"]), conv_dropout=float(config["conv_dropout"]), dropout=float(config["dropout"]),
    )


register(
    ModelEntry(
        name="cnnc",
        family="torch",
        build=build,
        description="CNNC gene-pair image CNN (study 001): conv blocks 32/64/128, dense 512; depth and width searchable",
        tasks=(GENE_PAIR_IMAGE,),
        featuriser=PairImageFeaturiser(),
    )
)
