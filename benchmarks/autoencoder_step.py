"""One optimizer step of the default study's two autoencoders (kl-f4c4, fsq-f4), before and after the trainer's
speed-ups, with the losses each way compared.

The study's exact autoencoder configs (configs/studies/default.yaml: 32 px shapes images, batch 32, widths
[16, 32, 64]) train on rendered images; every variant starts from the same seed-0 weights and takes the same
batches and noise, as the trainer does (`autoencoders.train.train_step`, with the batch's pixel conversion inside
the timed step). Variants alternate step by step in one process and their median CPU times per step are compared
(this process's CPU time: on a shared machine a step's wall time also holds the time other processes had the
core; the wall medians are reported beside them), so machine load shifts all of them alike:

  before            the previous trainer: nearest ×2 + 3×3 convolution in the decoder, a fresh tensor for each
                    residual sum, unfused AdamW
  fused_adamw       before, with AdamW fused (one kernel per step)
  folded_upsample   before, with the decoder's upsampling as a transposed convolution (conv.Upsample, training)
  inplace_residual  before, with each residual block's sum added in place (conv.ResBlock)
  after             all three: what `synthscale autoencoder train` and the study run now
  channels_last_w   before, with the weights in channels_last too (the batch already is, see nchw): not kept
  nchw              before, with the batch made NCHW-contiguous (the pixel conversion yields channels_last, which
                    oneDNN's convolutions then keep: this shows what that already buys)
  compiled          after, with torch.compile on the encoder and decoder (--compile; its cold compile is timed in
                    a fresh inductor cache)

Each row also says how far its per-step losses drift from `before`'s (max relative difference over the first 10
and over all steps): float rounding only, which in FSQ can flip a code near a rounding boundary and so move a
later loss visibly. `--profile` prints torch.profiler's top operators of the `after` step.

`--drift N` also trains `before`, `after` and `nchw` side by side for N steps (the run's learning-rate schedule)
and reports how far the latter two's losses part from `before`'s and their mean losses over the last tenth: `nchw`
differs from `before` by float rounding alone, so it shows how fast rounding alone parts two runs.

Usage: python benchmarks/autoencoder_step.py [--threads 1] [--repeats 30] [--compile] [--profile] [--drift 400]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import print_markdown_table, print_table, write_json

from synthscale.autoencoders import build_autoencoder
from synthscale.autoencoders.conv import ResBlock, Upsample
from synthscale.autoencoders.train import (
    build_optimizer,
    foreground_weights,
    render_split,
    train_step,
)
from synthscale.data.pixels import to_tensor
from synthscale.study.plan import plan_study
from synthscale.study.run import load_study_config

SPEC = Path(__file__).parents[1] / "configs" / "studies" / "default.yaml"
VARIANTS = ["before", "fused_adamw", "folded_upsample", "inplace_residual", "after", "channels_last_w", "nchw"]
FAST = {  # variant → its speed-ups: fused AdamW, folded upsampling, in-place residual sums
    "before": set(),
    "fused_adamw": {"fused"},
    "folded_upsample": {"folded"},
    "inplace_residual": {"inplace"},
    "channels_last_w": set(),
    "nchw": set(),
}
ALL = {"fused", "folded", "inplace"}
CURRENT_RESBLOCK = ResBlock.forward


def previous_resblock_forward(self, x: torch.Tensor) -> torch.Tensor:
    """ResBlock.forward before the in-place sum: the same numbers, one more activation-sized tensor."""
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(F.silu(self.norm2(h)))
    return self.skip(x) + h


class Variant:
    """A model and optimizer from the seed-0 weights, stepping through the same batches as every other variant."""

    def __init__(self, name: str, cfg, images: torch.Tensor):
        self.name, self.cfg, self.images = name, cfg, images
        torch.manual_seed(cfg.train.seed)
        self.model = build_autoencoder(cfg).train()
        self.fast = FAST.get(name, ALL)
        for m in self.model.modules():
            if isinstance(m, Upsample) and "folded" not in self.fast:
                m.train(False)  # the plain nearest ×2 + 3×3 convolution (Upsample's evaluation form)
        if name == "channels_last_w":
            self.model = self.model.to(memory_format=torch.channels_last)
        t = cfg.train
        if "fused" in self.fast:
            self.opt = build_optimizer(self.model, t, torch.device("cpu"))
        else:  # the previous trainer's optimizer
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=t.lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.compile_s = self.compile_cpu_s = None
        if name == "compiled":
            self.model.encoder = torch.compile(self.model.encoder)
            self.model.decoder = torch.compile(self.model.decoder)
        self.restart()

    def restart(self) -> None:
        self.gen = torch.Generator().manual_seed(self.cfg.train.seed)
        self.step_no, self.losses, self.wall, self.cpu = 0, [], [], []

    def step(self) -> None:
        ResBlock.forward = CURRENT_RESBLOCK if "inplace" in self.fast else previous_resblock_forward
        wall, cpu = time.perf_counter(), time.process_time()
        idx = torch.randint(0, len(self.images), (self.cfg.train.batch_size,), generator=self.gen)
        x = to_tensor(self.images[idx])  # [B, 3, H, W] in [-1, 1], channels_last
        if self.name == "nchw":
            x = x.contiguous()
        loss, _ = train_step(self.model, self.opt, x, self.step_no, self.cfg.train, self.gen)
        self.cpu.append(time.process_time() - cpu)
        self.wall.append(time.perf_counter() - wall)
        self.losses.append(loss)
        self.step_no += 1

    def compile_step(self) -> None:
        """Compile forward and backward on a first step in a cold inductor cache, then go back to the start."""
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
        torch._dynamo.reset()
        initial = [p.detach().clone() for p in self.model.parameters()]
        wall, cpu = time.perf_counter(), time.process_time()
        self.step()
        self.compile_s = time.perf_counter() - wall
        self.compile_cpu_s = time.process_time() - cpu  # inductor's compile workers are other processes
        with torch.no_grad():
            for p, p0 in zip(self.model.parameters(), initial):
                p.copy_(p0)
        self.opt.state.clear()
        self.restart()


def data_path_ms(cfg, images: torch.Tensor, repeats: int) -> float:
    """Median CPU ms of the step's data work: gather a batch, convert it, and its foreground loss weights."""
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        x = to_tensor(images[torch.randint(0, len(images), (cfg.train.batch_size,), generator=gen)])
        foreground_weights(x, cfg.train.foreground_weight)
        times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def profile_after(cfg, images: torch.Tensor, steps: int = 10) -> None:
    from torch.profiler import profile

    v = Variant("after", cfg, images)
    for _ in range(3):
        v.step()
    with profile() as prof:
        for _ in range(steps):
            v.step()
    print(f"\n{cfg.name}, `after` step: top operators by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def measure(cfg, images: torch.Tensor, names: list[str], repeats: int, warmup: int = 3) -> list[dict]:
    variants = [Variant(n, cfg, images) for n in names]
    for v in variants:
        if v.name == "compiled":
            v.compile_step()
            print(f"{cfg.name}: cold compile (first step) {v.compile_s:.1f} s wall", file=sys.stderr)
    for _ in range(warmup + repeats):
        for v in variants:
            v.step()
    base = variants[0]
    base_cpu, base_wall = (statistics.median(t[warmup:]) for t in (base.cpu, base.wall))
    rows = []
    for v in variants:
        cpu, wall = (statistics.median(t[warmup:]) for t in (v.cpu, v.wall))
        drift = [abs(a - b) / abs(b) for a, b in zip(v.losses, base.losses)]
        row = {
            "autoencoder": cfg.name,
            "variant": v.name,
            "steps": cfg.train.steps,
            "step_cpu_ms": 1e3 * cpu,
            "speedup": base_cpu / cpu,
            "step_wall_ms": 1e3 * wall,
            "wall_speedup": base_wall / wall,
            "max_rel_loss_diff_10": max(drift[:10]),  # the first 10 steps
            "max_rel_loss_diff": max(drift),  # every step (a flipped FSQ code moves a later loss visibly)
            "saved_cpu_s_per_run": cfg.train.steps * (base_cpu - cpu),
        }
        if v.compile_s is not None:
            row["compile_s"], row["compile_cpu_s"] = v.compile_s, v.compile_cpu_s
        rows.append(row)
    return rows


def drift(cfg, images: torch.Tensor, steps: int) -> list[dict]:
    """`before`, `after` and `nchw` (a layout change only: the rounding reference) trained side by side for `steps`
    steps on the same batches: how far each one's losses part from `before`'s."""
    base, *others = [Variant(n, cfg, images) for n in ("before", "after", "nchw")]
    for _ in range(steps):
        for v in (base, *others):
            v.step()
    tail, rows = max(steps // 10, 1), []
    for v in others:
        rel = [abs(x - y) / abs(x) for x, y in zip(base.losses, v.losses)]
        rows.append(
            {
                "autoencoder": cfg.name,
                "variant": v.name,
                "steps": steps,
                "first_step_over_1e-5": next((i for i, r in enumerate(rel) if r > 1e-5), None),
                "first_step_over_1e-3": next((i for i, r in enumerate(rel) if r > 1e-3), None),
                "max_rel_loss_diff": max(rel),
                "mean_loss_last_tenth": statistics.fmean(v.losses[-tail:]),
                "before_mean_loss_last_tenth": statistics.fmean(base.losses[-tail:]),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30, help="timed steps per variant (after 3 warm-up steps)")
    ap.add_argument("--images", type=int, default=2048, help="training images rendered for the batches")
    ap.add_argument("--compile", action="store_true", help="add the torch.compiled variant (cold compile timed)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--drift", type=int, default=0, help="also train before and after this many steps side by side")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    plan = plan_study(load_study_config(SPEC), tempfile.mkdtemp(), SPEC.parent)
    cfgs = [cfg for cfg, _ in plan.autoencoders.values()]
    start = time.process_time()
    images = torch.from_numpy(render_split(cfgs[0].data, "train", args.images, progress=False))
    render_ms = 1e3 * (time.process_time() - start) / len(images)
    names = VARIANTS + (["compiled"] if args.compile else [])
    rows = [r for cfg in cfgs for r in measure(cfg, images, names, args.repeats)]
    data_ms = {cfg.name: data_path_ms(cfg, images, 50) for cfg in cfgs}
    print_table(rows, f"autoencoder step, {args.threads} thread(s), medians")
    print()
    head = ["autoencoder", "variant", "step CPU ms", "speed-up", "wall ms", "wall speed-up"]
    head += ["loss diff, 10 steps", "all steps", "saved CPU-s / run"]
    print_markdown_table(
        head,
        [
            [
                r["autoencoder"],
                r["variant"],
                f"{r['step_cpu_ms']:.1f}",
                f"{r['speedup']:.3f}×",
                f"{r['step_wall_ms']:.1f}",
                f"{r['wall_speedup']:.3f}×",
                f"{r['max_rel_loss_diff_10']:.1e}",
                f"{r['max_rel_loss_diff']:.1e}",
                f"{r['saved_cpu_s_per_run']:.0f}",
            ]
            for r in rows
        ],
    )
    total = sum(r["saved_cpu_s_per_run"] for r in rows if r["variant"] == "after")
    print(f"\nestimated saving on the study's autoencoder stage (steps × saved CPU time per step): {total:.0f} CPU-s")
    for name, ms in data_ms.items():
        print(f"{name}: data path {ms:.2f} CPU ms of a step; rendering {render_ms:.3f} CPU ms/image (once per run)")
    drifts = [r for cfg in cfgs for r in drift(cfg, images, args.drift)] if args.drift else []
    print_table(drifts, f"before vs after over {args.drift} steps")
    write_json(
        "autoencoder_step",
        {
            "drift": drifts,
            "threads": args.threads,
            "repeats": args.repeats,
            "torch": torch.__version__,
            "render_cpu_ms_per_image": render_ms,
            "data_path_cpu_ms": data_ms,
            "estimated_saving_cpu_s": total,
            "rows": rows,
        },
    )
    if args.profile:
        for cfg in cfgs:
            profile_after(cfg, images)


if __name__ == "__main__":
    main()
