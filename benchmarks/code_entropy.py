"""How noisy a discrete autoencoder's tokens are where the image is plain: per-position code entropy on test renders.

    python benchmarks/code_entropy.py AUTOENCODER_DIR [AUTOENCODER_DIR ...] [--n 1000]

For each trained discrete autoencoder (FSQ or LFQ), tokenize the first n test images of the data it was trained on
and report the mean over token positions of the entropy (nats) of the code found there, and the share of tokens
equal to their position's most common code. On shapes scenes most positions are black background, which the
decoder draws the same whatever its code: a tokenizer that gives it one code scores a low entropy and a high share,
one whose background flips between neighbouring codes (plain FSQ) a high entropy, and the token models must then
learn to predict that noise (docs/models.md: Autoencoders, the FSQ commitment term).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402


def code_entropy(folder: Path, n: int) -> dict:
    from synthscale.autoencoders import load_autoencoder
    from synthscale.autoencoders.train import render_split

    ae = load_autoencoder(folder)
    if ae.kind != "discrete":
        raise SystemExit(f"code_entropy: {folder} is a {ae.kind} autoencoder; pass a discrete (FSQ or LFQ) one")
    images = torch.from_numpy(render_split(ae.cfg.data, "test", n, progress=False)).permute(0, 3, 1, 2)
    tokens = ae.tokens(images.float() / 127.5 - 1).reshape(len(images), -1)  # [n, positions]; tokens() is no-grad
    entropies = []
    for p in range(tokens.shape[1]):
        counts = torch.bincount(tokens[:, p], minlength=ae.vocab_size).float()
        probs = counts[counts > 0] / counts.sum()
        entropies.append(-(probs * probs.log()).sum().item())
    mode = torch.mode(tokens, dim=0).values
    return {
        "autoencoder": str(folder),
        "images": len(images),
        "entropy_nats": round(sum(entropies) / len(entropies), 3),
        "share_at_mode": round((tokens == mode).float().mean().item(), 3),
        "distinct_codes": int(tokens.unique().numel()),
        "vocab_size": ae.vocab_size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("autoencoders", nargs="+", type=Path, help="trained autoencoder folders (model.safetensors)")
    ap.add_argument("--n", type=int, default=1000, help="test images tokenized per autoencoder")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [code_entropy(folder, args.n) for folder in args.autoencoders]
    print_table(rows, f"Per-position code entropy on {args.n} test renders")
    write_json("code_entropy", {"n": args.n, "rows": rows})


if __name__ == "__main__":
    main()
