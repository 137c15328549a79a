"""GPU performance at paper scale: training MFU and sampling speed of every objective (issue 8).

One run, ≤ 8 minutes on one H100 (`--budget-s` stops early and lists what it skipped):
  1. the peak: the best bf16 FLOP/s of large square matmuls, measured in this run;
  2. training MFU for sizes S, B and L at 256 image tokens (+ caption tokens) for each objective: the trainer's
     step (loss under bf16 autocast, backward, gradient clipping, fused AdamW, EMA update) timed eagerly and
     with the Transformer blocks compiled (`--compile regional`); MFU = analytic `train_flops` / step time /
     peak. Goal (issue 8): MFU ≥ 0.40 for L with bf16 on an H100, every objective;
  3. sampling per objective under bf16 autocast with CFG: batch-1 latency and throughput (images/s at
     `--sample-batch`) at the paper's step counts — flow 4/10/20/50/100 Euler steps, masked 4/8/16/32 decoding
     steps, next-token 256 tokens with the KV cache (eager; and at the largest size the static-cache decode
     step compiled with CUDA graphs). Which SDPA kernels accept each training attention call is listed too;
  4. `--stages` (default on CUDA): a tiny study with every computing stage on the device — autoencoders, the
     probe, latent caches, training (train.device), evaluation with sampling speed — its wall seconds per stage
     kind, and a check that every record names the device it was evaluated on.
Sizes run largest first, so a budget cut drops the small ones.

TF32 is on for float32 matmuls on CUDA (`synthscale.train.distributed.enable_tf32`).

Measured on one H200: docs/results/gpu-h200.md (a later GPU run adds its page the same way). On a short lease,
`--objectives` and `--parts` measure part of the grid. Its mechanics are tested on CPU with tiny sizes
(`--quick --device cpu`, tests/test_gpu_path.py).

Usage: python benchmarks/gpu.py [--device cuda] [--compile regional|none] [--budget-s 450]
       python benchmarks/gpu.py --objectives masked,autoregressive --parts sample
       python benchmarks/gpu.py --quick --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from common import print_table, write_json

from synthscale.config import ModelConfig, ObjectiveConfig, TrainConfig
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.model.network import attention_mask
from synthscale.model.sizes import get_size
from synthscale.model.transformer import Block
from synthscale.objectives import get_objective
from synthscale.train.distributed import enable_tf32
from synthscale.train.ema import EMA
from synthscale.train.loop import LossModule, _clip, build_optimizer

GOAL_MFU = 0.40  # L, bf16, one H100, every objective
CFG = 3.0
OBJECTIVES = tuple(ObjectiveConfig.names())  # the registry
PAPER = {
    "sizes": ["S", "B", "L"],
    "side": 16,
    "text": 32,
    "vocab": 8192,
    "batch": {"S": 256, "B": 128, "L": 64},
    "flow_steps": [4, 10, 20, 50, 100],
    "masked_steps": [4, 8, 16, 32],
    "sample_batch": 64,
    "timed": 10,
    "warmup": 3,
    "peak_sizes": [4096, 8192, 16384],
    "latency_repeats": 3,
    "throughput_repeats": 2,
}
QUICK = {
    "sizes": ["2x64", "4x128"],
    "side": 4,
    "text": 8,
    "vocab": 64,
    "batch": {"2x64": 8, "4x128": 8},
    "flow_steps": [2, 4],
    "masked_steps": [2, 4],
    "sample_batch": 4,
    "timed": 2,
    "warmup": 1,
    "peak_sizes": [256, 512],
    "latency_repeats": 1,
    "throughput_repeats": 1,
}


# A study small enough to run in a minute or two on one device: every stage kind, all three objectives.
STAGES_STUDY = [
    "sizes=[2x64]",
    "autoencoder_overrides=[train.steps=15, train.batch_size=16]",
    "ablation_autoencoders=[]",
    "budgets=[3e9]",
    "seeds=[0]",
    "lr_sweep=null",
    "data.size=512",
    "data.val_size=128",
    "data.test_size=64",
    "data.holdout_size=32",
    "probe_overrides=[steps=15, eval_items=64]",
    "evaluation.n=16",
    "evaluation.holdout_n=4",
    "evaluation.sweep={flow: [2, 4], masked: [2, 4]}",
    "evaluation.steps={flow: 4, masked: 4}",
    "evaluation.loss_batches=1",
    "evaluation.batch_size=16",
    "evaluation.speed=true",
    "executor=sequential",
]
STAGES_RUNS = (
    "flow:model.patch_size=1, train.batch_size=16, train.milestones_per_decade=2, train.first_milestone_flops=5e8, "
    "train.warmup_steps=2, train.checkpoint_every=5"
)


def device_stages(device: torch.device, out: Path) -> dict:
    """Run the tiny study with every stage on `device`; wall seconds per stage kind and the records' devices."""
    import json
    import sqlite3

    from synthscale.study.run import run_study

    spec = Path(__file__).resolve().parents[1] / "configs" / "studies" / "default.yaml"
    overrides = [*STAGES_STUDY, f"device={device}", f"run_overrides=[{STAGES_RUNS}, train.device={device}]"]
    start = time.perf_counter()
    result = run_study(spec, out, overrides, progress=False)
    seconds: dict[str, float] = {}
    for done in out.glob("*/*/done.json"):
        kind = done.parent.parent.name
        seconds[kind] = seconds.get(kind, 0.0) + json.loads(done.read_text()).get("seconds", 0.0)
    with sqlite3.connect(out / "results.sqlite") as db:
        devices = sorted({json.loads(r[0]).get("device") for r in db.execute("SELECT instruments FROM records")})
    states = result["states"].values()
    return {
        "device": str(device),
        "stages_done": sum(v == "done" for v in states),
        "stages_failed": sum(v != "done" for v in states),
        "seconds_by_kind": seconds,
        "wall_s": time.perf_counter() - start,
        "record_devices": devices,
        # records name the device with its index (cuda:0), the study was given it without (cuda)
        "ok": all(v == "done" for v in states) and [torch.device(d) for d in devices] == [_indexed(device)],
    }


def _indexed(device: torch.device) -> torch.device:
    """`cuda` as the index it resolves to (`cuda:0`), as a record names it; the CPU has no index."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class Clock:
    """Wall time against the run's budget; measurements after it are skipped and listed."""

    def __init__(self, budget_s: float):
        self.start, self.budget, self.skipped = time.perf_counter(), budget_s, []

    def over(self, what: str) -> bool:
        if time.perf_counter() - self.start > self.budget:
            self.skipped.append(what)
            return True
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int) -> float:
    """Median seconds of fn() over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(device, sizes: list[int], repeats: int = 5) -> tuple[float, int]:
    """Best bf16 FLOP/s over square matmuls of `sizes` (the MFU denominator)."""
    best = (0.0, 0)
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        seconds = timed(lambda: a @ b, device, repeats, warmup=2)
        best = max(best, (2 * n**3 / seconds, n))
    return best


def specs(cfg: dict, objective) -> tuple[LatentSpec, TextSpec, ModelConfig]:
    """256 image tokens at paper scale: flow reads 4×32×32 latents in 2×2 patches (DiT-*/2), the token methods a
    16×16 grid of codes."""
    side = cfg["side"]
    text = TextSpec(vocab_size=cfg["vocab"], max_length=cfg["text"])
    if objective.latent == "continuous":
        return LatentSpec("continuous", 4, 2 * side, 2 * side), text, ModelConfig(patch_size=2)
    bits = max(1, (cfg["vocab"] - 1).bit_length())
    return LatentSpec("discrete", bits, side, side, cfg["vocab"]), text, ModelConfig()


def batch_of(objective, latent: LatentSpec, text: TextSpec, batch: int, device):
    g = torch.Generator().manual_seed(0)
    if latent.kind == "continuous":
        x = torch.randn(batch, latent.channels, latent.height, latent.width, generator=g)
    else:
        x = torch.randint(0, latent.vocab_size, (batch, latent.height, latent.width), generator=g)
    captions = torch.randint(3, text.vocab_size, (batch, text.max_length), generator=g)
    captions[:, text.max_length // 2 :] = text.pad_id  # half-length captions: the pad-key masks are exercised
    return x.to(device), captions.to(device)


def compile_blocks(model: torch.nn.Module) -> None:
    """Regional compilation: each Transformer block compiled on its own. Blocks share their code, so one
    compilation serves every layer (seconds, not minutes, for L), and the fusions that matter are inside."""
    for module in model.modules():
        if isinstance(module, Block):
            module.compile()


# ---------------------------------------------------------------------------------------------- training


def train_step_time(objective, size: str, cfg: dict, device, compiled: bool) -> tuple[float, int]:
    """Median seconds of the trainer's optimizer step, and its analytic FLOPs."""
    latent, text, model_cfg = specs(cfg, objective)
    model_cfg = ModelConfig(size=size, patch_size=model_cfg.patch_size)
    batch = cfg["batch"][size]
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: seconds saved per L model
        model = objective.build_model(model_cfg, latent, text)
    if compiled:
        # Dynamo's recompile limit (8) counts every model of the run, since the Blocks share one code object: the
        # sixth (objective, size) pair would silently run eager. Each timed model starts from a clean cache.
        torch._dynamo.reset()
        compile_blocks(model)
    loss_module = LossModule(objective, model).train()
    opt = build_optimizer(model, TrainConfig(lr=1e-4))
    ema = EMA(model, 0.9999)
    params = [p for p in model.parameters() if p.requires_grad]
    x, captions = batch_of(objective, latent, text, batch, device)
    gen = torch.Generator().manual_seed(0)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_module(x, captions, gen)
        loss.backward()
        _clip(params, 1.0)
        opt.step()
        ema.update(model)
        opt.zero_grad(set_to_none=True)

    seconds = timed(step, device, cfg["timed"], cfg["warmup"] + (2 if compiled else 0))
    flops = objective.train_flops(model_cfg, latent, text, batch)
    return seconds, flops


def sdpa_kernels(size: str, cfg: dict, device, causal: bool, queries: int | None = None) -> str:
    """The fused SDPA kernels that accept this model's attention call (bf16, its mask; `queries` = 1 for a
    KV-cache decoding step), e.g. "cudnn,efficient"; math is the unfused fallback."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    s = get_size(size)
    L, N, B = cfg["text"], cfg["side"] ** 2, 2
    T = L + N
    valid = torch.ones(B, L, dtype=torch.bool, device=device)
    valid[:, L // 2 :] = False
    q_start = T - (queries or T)
    mask = attention_mask(valid, T, causal, q_start=q_start)
    q = torch.randn(B, s.heads, T - q_start, s.head_dim, device=device, dtype=torch.bfloat16)
    k = torch.randn(B, s.heads, T, s.head_dim, device=device, dtype=torch.bfloat16)
    ok = []
    for name, backend in (
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
    ):
        try:
            # a refusing backend warns why before it raises: the probe's answer is the list, not the warnings
            with sdpa_kernel(backend), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                F.scaled_dot_product_attention(q, k, k, attn_mask=mask)
            ok.append(name)
        except RuntimeError:  # "No available kernel": this backend cannot take the call
            pass
    return ",".join(ok) or "math only"


def training_rows(cfg: dict, device, peak: float, compile_mode: str, clock: Clock, objectives) -> list[dict]:
    rows = []
    for name in objectives:
        objective = get_objective(ObjectiveConfig.of(name))
        for size in reversed(cfg["sizes"]):  # largest first: the goal size is measured before any budget cut
            if clock.over(f"train {name} {size}"):
                continue
            row = {"objective": name, "size": size, "batch": cfg["batch"][size]}
            with recorded(row):
                eager, flops = train_step_time(objective, size, cfg, device, compiled=False)
                row.update({"TFLOP_step": flops / 1e12, "eager_ms": 1e3 * eager, "eager_mfu": flops / eager / peak})
            _free(device)
            if compile_mode == "regional" and not clock.over(f"train {name} {size} compiled"):
                with recorded(row):
                    compiled, flops = train_step_time(objective, size, cfg, device, compiled=True)
                    row.update({"compiled_ms": 1e3 * compiled, "compiled_mfu": flops / compiled / peak})
                _free(device)
            with recorded(row):
                row["sdpa"] = sdpa_kernels(size, cfg, device, causal=objective.name == "autoregressive")
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- sampling


def sampling_rows(cfg: dict, device, sizes: list[str], clock: Clock, compile_decode: bool, objectives) -> list[dict]:
    rows = []
    for name in objectives:
        objective = get_objective(ObjectiveConfig.of(name))
        for size in reversed(sizes):
            latent, text, model_cfg = specs(cfg, objective)
            model_cfg = ModelConfig(size=size, patch_size=model_cfg.patch_size)
            torch.manual_seed(0)
            with torch.device(device):
                model = objective.build_model(model_cfg, latent, text).eval()
            _, captions = batch_of(objective, latent, text, cfg["sample_batch"], device)
            grid = {"flow": cfg["flow_steps"], "masked": cfg["masked_steps"]}.get(name, [latent.tokens])
            variants = [({}, "")]
            if name == "autoregressive" and compile_decode and size == sizes[-1]:  # compiles cost minutes: one size
                variants.append(({"compiled": True}, "compiled decode"))
            for steps in grid:
                for extra, label in variants:
                    if clock.over(f"sample {name} {size} {steps} {label}".strip()):
                        continue
                    row = {"objective": name + (f" ({label})" if label else ""), "size": size, "steps": steps}
                    with recorded(row):
                        row.update(
                            _sample_row(objective, model, model_cfg, latent, text, captions, steps, extra, cfg, device)
                        )
                    rows.append(row)
            del model
            _free(device)
    return rows


def _sample_row(objective, model, model_cfg, latent, text, captions, steps, extra, cfg, device) -> dict:
    def run(b: int):
        def fn():
            with torch.autocast(device.type, dtype=torch.bfloat16), torch.no_grad():
                objective.sample(model, captions[:b], steps, CFG, torch.Generator().manual_seed(0), **extra)

        return fn

    B = cfg["sample_batch"]
    latency = timed(run(1), device, cfg["latency_repeats"], warmup=1)
    batch_s = timed(run(B), device, cfg["throughput_repeats"], warmup=1)
    flops = objective.sample_flops(model_cfg, latent, text, steps, CFG)
    return {
        "latency_ms": 1e3 * latency,
        "images_per_s": B / batch_s,
        "batch": B,
        "GFLOP_image": flops / 1e9,
        "TFLOP_per_s": B * flops / batch_s / 1e12,
    }


@contextlib.contextmanager
def recorded(row: dict):
    """A failed measurement (out of memory, a compile error) becomes the row's `error`; the run goes on, so one
    GPU session still brings back every other number."""
    try:
        yield
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def filled(rows: list[dict]) -> list[dict]:
    """Rows with every column any row has ('' where a measurement is missing), for the printed table."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: r.get(k, "") for k in keys} for r in rows]


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and step counts: the mechanics, in seconds")
    ap.add_argument(
        "--compile",
        choices=["regional", "none"],
        default=None,
        help="also time the step with compiled Transformer blocks (default: regional on CUDA)",
    )
    ap.add_argument("--objectives", default=None, help="comma-separated objectives (default: every registered one)")
    ap.add_argument("--parts", default="train,sample", help="which tables to measure: train, sample or both")
    ap.add_argument("--sample-sizes", default=None, help="comma-separated sizes for sampling (default: all)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting measurements after this long")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (--device cpu)")
    ap.add_argument(
        "--stages",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run a tiny study with every stage on the device (default: on CUDA)",
    )
    ap.add_argument("--stages-dir", type=Path, default=None, help="the tiny study's folder (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/gpu_DEVICE.json)")
    args = ap.parse_args(argv)
    objectives = args.objectives.split(",") if args.objectives else OBJECTIVES
    unknown = sorted(set(objectives) - set(OBJECTIVES))
    if unknown:
        sys.exit(f"--objectives: unknown {unknown}; choose from {', '.join(OBJECTIVES)}")
    parts = set(args.parts.split(","))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU machine, or use --quick --device cpu to check the mechanics")
    torch.set_num_threads(args.threads)
    enable_tf32(device)
    cfg = QUICK if args.quick else PAPER
    compile_mode = args.compile or ("regional" if device.type == "cuda" and not args.quick else "none")
    sample_sizes = args.sample_sizes.split(",") if args.sample_sizes else cfg["sizes"]
    clock = Clock(args.budget_s)

    peak, n = matmul_peak(device, cfg["peak_sizes"])
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{gpu}, torch {torch.__version__}: bf16 matmul peak {peak / 1e12:.1f} TFLOP/s (n={n})")
    train = training_rows(cfg, device, peak, compile_mode, clock, objectives) if "train" in parts else []
    print_table(
        filled(train),
        f"Training step (bf16 autocast, fused AdamW, clip, EMA), {cfg['side'] ** 2} image "
        f"+ {cfg['text']} caption tokens; MFU = analytic train_flops / time / measured bf16 peak",
    )
    sample = (
        sampling_rows(cfg, device, sample_sizes, clock, compile_mode != "none", objectives) if "sample" in parts else []
    )
    print_table(
        filled(sample),
        f"Sampling (bf16 autocast, CFG {CFG}): latency at batch 1, throughput at batch {cfg['sample_batch']}",
    )
    goal = {
        r["objective"]: max(r.get("eager_mfu", 0.0), r.get("compiled_mfu", 0.0)) >= GOAL_MFU
        for r in train
        if r["size"] == "L"
    }
    if goal:
        print(f"\ngoal MFU ≥ {GOAL_MFU} at L: {goal}")
    stages = None
    if args.stages if args.stages is not None else device.type == "cuda":
        if not clock.over("stages"):
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                stages = device_stages(device, args.stages_dir or Path(tmp) / "study")
            kinds = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(stages["seconds_by_kind"].items()))
            print(
                f"\nstages on {device}: {stages['stages_done']} done, {stages['stages_failed']} failed ({kinds}); "
                f"records name {stages['record_devices']}: {'ok' if stages['ok'] else 'NOT OK'}"
            )
    if clock.skipped:
        print(f"\nskipped after the {args.budget_s:.0f} s budget: {', '.join(clock.skipped)}")
    payload = {
        "device": gpu,
        "torch": torch.__version__,
        "quick": args.quick,
        "peak_bf16_flops": peak,
        "peak_matmul_n": n,
        "compile": compile_mode,
        "cfg_scale": CFG,
        "training": train,
        "sampling": sample,
        "goal_mfu": GOAL_MFU,
        "goal_met": goal,
        "stages": stages,
        "skipped": clock.skipped,
        "seconds": time.perf_counter() - clock.start,
    }
    if args.out:
        from synthscale import atomic

        atomic.write_json(args.out, payload)
    else:
        write_json(f"gpu_{device.type}{'_quick' if args.quick else ''}", payload)
    return payload


if __name__ == "__main__":
    main()
