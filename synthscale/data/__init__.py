"""Datasets, caption tokenizers and the latent cache."""

from __future__ import annotations

from synthscale.config import ConfigError, DataConfig

SPLITS = ("train", "val", "test", "holdout")  # every dataset's splits; holdout: the held-out attribute pairs


def get_dataset(cfg: DataConfig, split: str = "train"):
    """The dataset a config names, for one split. Items are {"image", "caption", "attributes"}."""
    if cfg.dataset == "shapes":
        from synthscale.data.shapes import ShapesDataset

        return ShapesDataset(cfg, split)
    if cfg.dataset == "folder":
        from synthscale.data.folder import FolderDataset

        return FolderDataset(cfg, split)
    if cfg.dataset == "shards":
        from synthscale.data.shards import ShardDataset

        return ShardDataset(cfg, split)
    raise ConfigError(f"data.dataset {cfg.dataset!r} is not available; use 'shapes', 'folder' or 'shards'")
