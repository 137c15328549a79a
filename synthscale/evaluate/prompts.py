"""Fixed evaluation prompts: the first n items of a split, so every run and setting is scored on the same
captions, and the real images of those items are the reference set of the Fréchet distance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from synthscale.config import DataConfig
from synthscale.data import get_dataset


@dataclass
class PromptSet:
    split: str
    captions: list[str]
    attributes: list[dict[str, Any]]
    images: np.ndarray  # uint8 [n, H, W, 3], the real renders of the same items

    def __len__(self) -> int:
        return len(self.captions)


def prompt_set(data_cfg: DataConfig, split: str, n: int) -> PromptSet:
    ds = get_dataset(data_cfg, split)
    if n > len(ds):
        raise_more = f"data.{'holdout_size' if split == 'holdout' else split + '_size'}"
        if data_cfg.dataset != "shapes" and split in ("val", "test"):
            raise_more += f" / data.{split}_fraction (a share of your images)"
        raise ValueError(
            f"evaluation asks for {n} prompts but the {split} split has {len(ds)} items; "
            f"lower evaluation.n to at most {len(ds)} or raise {raise_more}"
        )
    items = [ds[i] for i in range(n)]
    return PromptSet(
        split,
        [it["caption"] for it in items],
        [it["attributes"] for it in items],
        np.stack([it["image"] for it in items]),
    )
