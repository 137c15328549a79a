"""Training-step throughput of each objective as a fraction of a measured matmul peak.

One run measures a float32 matmul peak, then the training step (loss, backward, AdamW step) of every objective
at 4x128 and 6x192 with 16 and 64 image tokens (+ 24 caption tokens), in float32 and under bf16 autocast, and
prints achieved FLOP/s (analytic `train_flops` / median step time) against the float32 and bf16 matmul peaks,
and against the FLOP/s of a lone matmul of the model's own MLP shape ([B·T, D] @ [D, 4D]; `fp32_of_mlp_mm`).
Goal: ≥ 0.6 of the float32 peak at 6x192 with 64 image tokens. The optimizer is the trainer's (`build_optimizer`);
`--compile` adds a column for the float32 step under torch.compile (the trainer's `train.compile`).

`--study` measures the default study's shapes instead: 1x64 and 2x64 at batch 32, 12 caption tokens, 16 and 64
image tokens (flow: 8×8×4 latents at patch 2 and 1; token methods: 4×4 and 8×8 codes), the trainer's whole step
(loss, backward, clip, AdamW, EMA) eager, eager with glibc keeping freed memory (`eager_heap`, the trainer's CPU
setting) and torch.compiled (with that setting too) side by side (steps/s, GFLOP/s, fraction of the float32 peak),
the compile time cold (a fresh inductor cache) and warm (the same graph again), and the path the
trainer picks (train/fastpath.py) for a run of `--budget` FLOPs with those measured numbers.

Usage: python benchmarks/train_step.py [--threads 1] [--batch 32] [--repeats 5] [--device cpu|cuda] [--compile]
       [--objectives flow masked autoregressive] [--sizes 4x128 6x192]
       python benchmarks/train_step.py --study [--threads 1] [--repeats 15] [--budget 5e12] [--sizes 1x64 2x64]
       [--inductor cpp_wrapper=True ...]  (torch._inductor.config settings for the compiled arm)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time

import torch
from common import median_time, print_table, write_json

from synthscale.config import ModelConfig, ObjectiveConfig, TrainConfig
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.objectives import get_objective
from synthscale.train import fastpath
from synthscale.train.ema import EMA
from synthscale.train.loop import LossModule, _clip, build_optimizer

GOAL = 0.6  # fraction of the float32 peak at 6x192, 64 image tokens
TEXT = TextSpec(vocab_size=64, max_length=24)
VOCAB = 1024  # discrete codebook (e.g. 10-bit LFQ)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: str, repeats: int) -> tuple[float, int]:
    """Best FLOP/s over square matmuls of a few sizes (the size that fits the cache/cores best wins)."""
    best = (0.0, 0)
    for n in (1024, 2048, 4096) if device == "cuda" else (512, 1024, 2048):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)

        def mm():
            a @ b
            sync(device)

        best = max(best, (2 * n**3 / median_time(mm, repeats=repeats), n))
    return best


def shape_peak(rows: int, width: int, device: str, repeats: int) -> float:
    """FLOP/s of the model's own widest matmul, [rows, D] @ [D, 4D] (the MLP): what a step could reach if it
    were nothing but matmuls of its own shapes."""
    a = torch.randn(rows, width, device=device)
    b = torch.randn(width, 4 * width, device=device)

    def mm():
        a @ b
        sync(device)

    return 2 * rows * width * 4 * width / median_time(mm, repeats=repeats)


def latents(obj, side: int, batch: int, device: str):
    g = torch.Generator().manual_seed(0)
    if obj.latent == "continuous":
        spec = LatentSpec("continuous", 4, side, side)
        x = torch.randn(batch, 4, side, side, generator=g)
    else:
        spec = LatentSpec("discrete", 10, side, side, vocab_size=VOCAB)
        x = torch.randint(0, VOCAB, (batch, side, side), generator=g)
    text = torch.randint(3, TEXT.vocab_size, (batch, TEXT.max_length), generator=g)
    text[:, 12:] = 0  # half-length captions, padded
    return spec, x.to(device), text.to(device)


def step_time(obj, model_cfg, side, batch, repeats, device, bf16: bool, compiled: bool = False) -> tuple[float, int]:
    torch.manual_seed(0)
    spec, x, text = latents(obj, side, batch, device)
    model = obj.build_model(model_cfg, spec, TEXT).to(device)
    if compiled:
        model.compile()
    opt = build_optimizer(model, TrainConfig(lr=1e-4))
    gen = torch.Generator().manual_seed(0)
    autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        with autocast:
            loss = obj.loss(model, x, text, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)

    return median_time(step, repeats=repeats, warmup=2), obj.train_flops(model_cfg, spec, TEXT, batch)


STUDY_TEXT = TextSpec(vocab_size=64, max_length=12)  # the default study: captions of ≤ 11 words


def study_case(name: str, size: str, tokens: int, batch: int, device: str):
    """(objective, model config, latents, captions) of the default study at `tokens` image tokens."""
    obj = get_objective(ObjectiveConfig.of(name))
    g = torch.Generator().manual_seed(0)
    if obj.latent == "continuous":  # kl-f4c4 latents of 32 px images: 8×8×4, patch 2 → 16 tokens, patch 1 → 64
        spec, patch = LatentSpec("continuous", 4, 8, 8), {16: 2, 64: 1}[tokens]
        x = torch.randn(batch, 4, 8, 8, generator=g)
    else:
        side, patch = int(tokens**0.5), 1
        spec = LatentSpec("discrete", 10, side, side, vocab_size=VOCAB)
        x = torch.randint(0, VOCAB, (batch, side, side), generator=g)
    text = torch.randint(3, STUDY_TEXT.vocab_size, (batch, STUDY_TEXT.max_length), generator=g)
    text[:, 8:] = 0  # shorter captions, padded
    return obj, ModelConfig(size=size, patch_size=patch), spec, x.to(device), text.to(device)


def trainer_step(obj, model_cfg, spec, x, text, device: str, compiled: bool):
    """The trainer's optimizer step (loss, backward, clip, AdamW, EMA), eager or with the loss module compiled as
    the trainer compiles it."""
    torch.manual_seed(0)
    model = obj.build_model(model_cfg, spec, STUDY_TEXT).to(device)
    loss_module = LossModule(obj, model).train()
    forward = torch.compile(loss_module) if compiled else loss_module
    opt, ema = build_optimizer(model, TrainConfig(lr=1e-4)), EMA(model, 0.99)
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)

    def step():
        loss = forward(x, text, gen)
        loss.backward()
        float(loss)
        _clip(params, 1.0)
        opt.step()
        ema.update(model)
        opt.zero_grad(set_to_none=True)
        sync(device)

    return step


def heap_kept(kept: bool) -> None:
    """glibc's malloc as the trainer sets it on CPU (fastpath.keep_freed_memory), or its thresholds back at
    128 KiB (the default's starting point; glibc would raise them dynamically)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt(-3, 32 << 20 if kept else 128 << 10)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 30 if kept else 128 << 10)  # M_TRIM_THRESHOLD


def first_call_s(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def study_rows(args, peak32: float) -> list[dict]:
    """Eager vs compiled steps, timed alternately (a load that comes and goes touches both alike)."""
    rows = []
    for size in args.sizes:
        for name in args.objectives:
            for tokens in (16, 64):
                obj, model_cfg, spec, x, text = study_case(name, size, tokens, args.batch, args.device)
                flops = obj.train_flops(model_cfg, spec, STUDY_TEXT, args.batch)
                eager = trainer_step(obj, model_cfg, spec, x, text, args.device, False)
                eager_first = first_call_s(eager)
                paths = {"eager": eager, "eager_heap": eager}
                cold = warm = float("nan")
                if not args.no_compile:
                    compiled = trainer_step(obj, model_cfg, spec, x, text, args.device, True)
                    cold = first_call_s(compiled) - eager_first
                    torch._dynamo.reset()  # forget the compiled code in memory; inductor's disk cache stays
                    paths["compiled"] = compiled = trainer_step(obj, model_cfg, spec, x, text, args.device, True)
                    warm = first_call_s(compiled) - eager_first
                times: dict[str, list[float]] = {key: [] for key in paths}
                eager_cpu = 0.0
                for _ in range(2):  # warm-up
                    for step in paths.values():
                        step()
                for _ in range(args.repeats):
                    for key, step in paths.items():
                        heap_kept(key != "eager")
                        start, cpu = time.perf_counter(), time.process_time()
                        step()
                        times[key].append(time.perf_counter() - start)
                        eager_cpu += time.process_time() - cpu if key == "eager" else 0.0
                te = statistics.median(times["eager"])
                th = statistics.median(times["eager_heap"])
                tc = statistics.median(times["compiled"]) if "compiled" in times else float("nan")
                run_steps = int(args.budget // flops)
                # not compiled here: what the trainer would assume on a repeat (the priors' speedup, warm)
                known = (
                    {"speedup": fastpath.PRIOR_SPEEDUP, "compile_s": [fastpath.PRIOR_COLD_S]}
                    if args.no_compile
                    else {"speedup": te / tc, "compile_s": [cold, warm]}
                )
                load = sum(times["eager"]) / (eager_cpu / args.threads)  # as the trainer measures it
                first_run = fastpath.decide(run_steps - fastpath.PROBE_STEPS, te, None, load)
                repeat_run = fastpath.decide(run_steps - fastpath.PROBE_STEPS, te, known, load)
                rows.append(
                    {
                        "objective": name,
                        "size": size,
                        "img_tokens": tokens,
                        "patch": model_cfg.patch_size,
                        "GFLOP_step": flops / 1e9,
                        "eager_steps_s": 1 / te,
                        "eager_GFLOPs": flops / te / 1e9,
                        "eager_of_peak": flops / te / peak32,
                        "heap_kept_steps_s": 1 / th,
                        "heap_kept_speedup": te / th,
                        "compiled_steps_s": 1 / tc,
                        "compiled_GFLOPs": flops / tc / 1e9,
                        "compiled_of_peak": flops / tc / peak32,
                        "speedup": te / tc,
                        "compile_cold_s": cold,
                        "compile_warm_s": warm,
                        "run_steps": run_steps,
                        "load": load,
                        "path_first_run": first_run["choice"],
                        "path_repeat_run": repeat_run["choice"],
                        "run_s_eager": run_steps * te,
                        "run_s_compiled_warm": warm + run_steps * tc,
                    }
                )
                print_table(rows[-1:], f"{name} {size} {tokens} tokens")
    return rows


def inductor_settings(pairs: list[str]) -> dict:
    """Apply `KEY=VALUE` settings (Python literals) to torch._inductor.config; returns them as a dict."""
    import ast

    import torch._inductor.config as inductor

    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not hasattr(inductor, key):
            raise SystemExit(f"--inductor {pair!r}: expected KEY=VALUE with KEY a torch._inductor.config setting")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[key] = value  # a bare string, e.g. max_autotune_gemm_backends=CPP,ATEN
        setattr(inductor, key, settings[key])
    return settings


def study_main(args) -> None:
    # a fresh inductor cache: the first compile of each graph is cold, as on a fresh clone
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="synthscale-inductor-")
    inductor = inductor_settings(args.inductor)
    if args.sizes == ["4x128", "6x192"]:
        args.sizes = ["1x64", "2x64"]
    peak32, n32 = matmul_peak(torch.float32, args.device, args.repeats)
    rows = study_rows(args, peak32)
    peak32 = max(peak32, matmul_peak(torch.float32, args.device, args.repeats)[0])
    for r in rows:
        r["eager_of_peak"] = r["eager_GFLOPs"] * 1e9 / peak32
        r["compiled_of_peak"] = r["compiled_GFLOPs"] * 1e9 / peak32
    print(f"matmul peak: float32 {peak32 / 1e9:.1f} GFLOP/s (n={n32}); {args.threads} thread(s), device {args.device}")
    print_table(
        rows,
        f"The default study's training step (loss + backward + clip + AdamW + EMA), batch {args.batch}, "
        f"{STUDY_TEXT.max_length} caption tokens; eager vs torch.compile, medians of {args.repeats} alternating "
        f"steps; path_* = what the trainer picks for a {args.budget:.3g}-FLOP run (first run of a graph on this "
        f"machine / a repeat, with the compile warm)",
    )
    write_json(
        f"train_step_study_{args.device}",
        {
            "rows": rows,
            "peak_fp32_flops": peak32,
            "threads": args.threads,
            "budget": args.budget,
            "batch": args.batch,
            "inductor": inductor,
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="also time the float32 step under torch.compile")
    names = ObjectiveConfig.names()
    ap.add_argument("--objectives", nargs="+", default=names, choices=names)
    ap.add_argument("--sizes", nargs="+", default=["4x128", "6x192"], help="--study: 1x64 2x64 unless given")
    ap.add_argument("--study", action="store_true", help="the default study's shapes, eager vs the trainer's path")
    ap.add_argument("--no-compile", action="store_true", help="--study: eager only (no compile columns)")
    ap.add_argument("--budget", type=float, default=5e12, help="--study: FLOPs of the run the path is picked for")
    ap.add_argument("--inductor", nargs="*", default=[], metavar="KEY=VALUE", help="--study: inductor settings")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    if args.study:
        return study_main(args)

    peak32, n32 = matmul_peak(torch.float32, dev, args.repeats)
    peak16, n16 = matmul_peak(torch.bfloat16, dev, args.repeats)
    rows = []
    for name in args.objectives:
        obj = get_objective(ObjectiveConfig.of(name))
        for size in args.sizes:
            for side in (4, 8):
                t32, flops = step_time(obj, ModelConfig(size=size), side, args.batch, args.repeats, dev, False)
                t16, _ = step_time(obj, ModelConfig(size=size), side, args.batch, args.repeats, dev, True)
                width = int(size.split("x")[1])
                mlp_peak = shape_peak(args.batch * (side * side + TEXT.max_length), width, dev, args.repeats)
                row = {
                    "objective": name,
                    "size": size,
                    "img_tokens": side * side,
                    "batch": args.batch,
                    "GFLOP_step": flops / 1e9,
                    "fp32_ms": 1e3 * t32,
                    "fp32_GFLOPs": flops / t32 / 1e9,
                    "fp32_of_peak": flops / t32 / peak32,
                    "fp32_of_mlp_mm": flops / t32 / mlp_peak,
                    "bf16_ms": 1e3 * t16,
                    "bf16_GFLOPs": flops / t16 / 1e9,
                    "bf16_of_peak": flops / t16 / peak16,
                }
                if args.compile:
                    tc, _ = step_time(obj, ModelConfig(size=size), side, args.batch, args.repeats, dev, False, True)
                    row.update(compiled_fp32_ms=1e3 * tc, compiled_fp32_GFLOPs=flops / tc / 1e9)
                rows.append(row)
    # the peak again at the end: on a shared machine, keep the better of the two
    peak32 = max(peak32, matmul_peak(torch.float32, dev, args.repeats)[0])
    for r in rows:
        r["fp32_of_peak"] = r["fp32_GFLOPs"] * 1e9 / peak32
        if args.compile:
            r["compiled_fp32_of_peak"] = r["compiled_fp32_GFLOPs"] * 1e9 / peak32
    goal = [r for r in rows if r["size"] == "6x192" and r["img_tokens"] == 64]
    print(
        f"matmul peak: float32 {peak32 / 1e9:.1f} GFLOP/s (n={n32}), bf16 {peak16 / 1e9:.1f} GFLOP/s (n={n16}); "
        f"{args.threads} thread(s), device {dev}"
    )
    print_table(
        rows,
        f"Training step (loss + backward + AdamW), {TEXT.max_length} caption tokens, codebook {VOCAB}; "
        f"achieved = analytic train_flops / median step time",
    )
    met = {r["objective"]: r["fp32_of_peak"] >= GOAL for r in goal}
    print(f"\ngoal ≥ {GOAL} of the float32 peak at 6x192, 64 tokens: {met}")
    write_json(
        f"train_step_{dev}",
        {
            "rows": rows,
            "peak_fp32_flops": peak32,
            "peak_bf16_flops": peak16,
            "threads": args.threads,
            "goal_fraction": GOAL,
            "goal_met": met,
        },
    )


if __name__ == "__main__":
    main()
