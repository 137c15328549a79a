"""Autoencoder ceilings: each shipped shapes autoencoder config, trained at the settings a study trains it with,
scored by the study's instruments on its reconstructions of test renders.

    python benchmarks/autoencoder_ceilings.py [--configs kl-f4c4 fsq-f8 ...] [--study configs/studies/default.yaml]
                                              [--n 512] [--out DIR] [--cache DIR]

A generator can at best produce what its autoencoder decodes, so these are the ceilings of every paradigm trained
on them. Each config is read as the study reads it (its data section and `autoencoder_overrides`), trained on one
thread, then its reconstructions of the first n test renders are read by the attribute probe (whole-prompt and
per-attribute accuracy, as generated images are) and compared with the real renders by fd-probe; PSNR beside.
Floors (the configs' acceptance): ≥ 0.95 on every attribute and ≥ 0.90 whole-prompt. Real renders score 1.00.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

from benchmarks.common import print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHAPES_CONFIGS = (
    "kl-f4c4",
    "fsq-f4",
    "kl-f4c8",
    "kl-f4c16",
    "lfq-f4",
    "fsq-f8",
    "lfq-f8",
)  # the paper-* ones are GPU jobs
ATTRIBUTES = ("shape", "colour", "size", "position")
FLOORS = {"prompt_acc": 0.90, **{f"attr_acc_{a}": 0.95 for a in ATTRIBUTES}}


def measure(name: str, study, spec_dir: Path, out: Path, probe, n: int) -> dict:
    """Train one config as the study would, then score its reconstructions with the probe instrument."""
    from synthscale.autoencoders import load_autoencoder
    from synthscale.autoencoders.train import evaluate_autoencoder, train_autoencoder
    from synthscale.evaluate.ceilings import reconstruction_ceiling
    from synthscale.study.plan import _autoencoder_config

    cfg = _autoencoder_config(str(ROOT / "configs" / "autoencoders" / f"{name}.yaml"), study, spec_dir)
    summary = train_autoencoder(cfg, out / name, progress=False)
    evaluate_autoencoder(out / name, limit=64, progress=False)  # reconstructions.png: look at it
    c = reconstruction_ceiling(load_autoencoder(out / name), [probe], study.data, n, 0)["metrics"]
    row = {
        "autoencoder": name,
        "steps": cfg.train.steps,
        "train_cpu_s": round(summary["train_cpu_s"], 1),
        "psnr": round(c["psnr"], 2),
        "prompt_acc": round(c["prompt_acc"], 3),
        "prompt_ci": f"[{c['prompt_acc_lo']:.3f}, {c['prompt_acc_hi']:.3f}]",
        **{a: round(c[f"attr_acc_{a}"], 3) for a in ATTRIBUTES},
        "fd_probe": round(c["fd_probe"], 2),
    }
    row["floors"] = "pass" if all(c[k] >= v for k, v in FLOORS.items()) else "FAIL"
    return row


def main() -> None:
    from synthscale.config import StudyConfig, load
    from synthscale.evaluate.instruments import open_instrument

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=list(SHAPES_CONFIGS))
    ap.add_argument("--study", default=str(ROOT / "configs" / "studies" / "default.yaml"))
    ap.add_argument("--n", type=int, default=512, help="test renders reconstructed and scored")
    ap.add_argument("--out", default=None, help="where the trained autoencoders go (default: a temporary folder)")
    ap.add_argument("--cache", default=None, help="probe cache folder (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    study = load(StudyConfig, args.study)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "autoencoders")
        start = time.process_time()
        probe = open_instrument("probe", study.data, args.cache or Path(tmp) / "cache")
        print(f"probe ready ({time.process_time() - start:.0f} CPU s)")
        rows = []
        for name in args.configs:
            rows.append(measure(name, study, Path(args.study).resolve().parent, out, probe, args.n))
            print(rows[-1], flush=True)
    title = (
        f"Autoencoder ceilings: reconstructions of {args.n} test renders read by the attribute probe "
        f"(settings of {Path(args.study).name}; floors: every attribute ≥ 0.95, whole prompt ≥ 0.90)"
    )
    print_table(rows, title)
    write_json("autoencoder_ceilings", {"study": args.study, "n": args.n, "floors": FLOORS, "rows": rows})


if __name__ == "__main__":
    main()
