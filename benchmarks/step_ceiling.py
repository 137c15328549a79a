"""How much of the default study's CPU training step is matmul, and what this branch's step changes gained.

Two measurements of the trainer's whole step (loss, backward, clip, fused AdamW, EMA; `train_step.trainer_step`)
at the default study's shapes (batch 32, 12 caption tokens, 16 and 64 image tokens):

  A/B    the step as it was before this branch (QKV split by three selects, whose backward zero-fills the whole
         QKV gradient three times; QK-norm by ATen's composite rms_norm; the masked loss over gathered
         `logits[masked]`; autograd's cross-entropy backward) against today's (`unbind`; the CPU rms-norm
         backward of model/transformer.py; `codes.token_cross_entropy` over all positions), the two arms
         alternating step by step in one process, medians.
  ceiling  the step's Linear matmuls (every aten mm/addmm the profiler records in one step, same shapes,
         replayed alone on fresh contiguous tensors) and its attention kernels (SDPA forward + backward of the
         same shapes and mask), against the whole step: matmul+attention time / step time is the most any
         removal of the other (elementwise, norm, loss, optimizer, host) work could speed the step up by; the
         matmuls' own GFLOP/s (their 2·m·k·n over their time alone) against a square float32 matmul's peak.
  stacked  the same step at K× the batch, per K examples-batches, against the step: the most that training K
         replicates (seeds, learning rates) as one stacked model could gain per replicate. An upper bound: K
         stacked models run the same elementwise work and matmuls of the same shapes (batched, not wider), and
         K optimizer updates, where this arm shares one set of weights and one update.

Usage: python benchmarks/step_ceiling.py [--threads 1] [--repeats 15] [--sizes 2x64 1x64]
       [--objectives flow masked autoregressive] [--revert unbind rms_norm token_loss] [--stacked 2 4]
(--revert: the before arm undoes only the named changes, to see what each one gained.)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from common import print_table, write_json
from torch.profiler import ProfilerActivity, profile
from train_step import STUDY_TEXT, heap_kept, matmul_peak, study_case, trainer_step

from synthscale.config import ObjectiveConfig
from synthscale.model import transformer
from synthscale.objectives import codes, masked


def _attention_before(self, x, mask=None, cache=None, layer: int = 0):
    """transformer.Attention.forward before this change: q, k, v by three selects of the QKV output."""
    B, T, D = x.shape
    h = self.qkv(x).view(B, T, 3, self.heads, D // self.heads)
    q, k, v = transformer._rms(self.q_norm, h[:, :, 0]), transformer._rms(self.k_norm, h[:, :, 1]), h[:, :, 2]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return self.proj(y.transpose(1, 2).reshape(B, T, D))


def _rms_before(norm, x):
    """QK-norm before this change: ATen's rms_norm (on a CPU a composite autograd differentiates op by op)."""
    return F.rms_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.eps)


def _masked_loss_before(self, model, latents, text, generator, drop_captions=True):
    """objectives.masked's loss before this change: the NLL of the gathered masked logits."""
    B, dev = latents.shape[0], latents.device
    tokens = latents.reshape(B, -1)
    N = tokens.shape[1]
    n_masked = torch.ceil(masked.mask_ratio(masked.rand(B, generator, dev)) * N).clamp(1, N)
    rank = masked.rand((B, N), generator, dev).argsort(1).argsort(1)
    hidden = rank < n_masked[:, None]
    drop = self.caption_drop(B, generator, drop_captions, dev)
    prefix, valid = model.encode_text(text, drop)
    logits = model(tokens.masked_fill(hidden, model.mask_id), prefix, valid)
    return model.codes.nll(logits[hidden], tokens[hidden])


def _cross_entropy_before(logits, ids, scored=None):
    if scored is not None:
        logits, ids = logits[scored], ids[scored]
    return F.cross_entropy(logits, ids)


PATCHES = {  # change → what it replaced
    "unbind": [(transformer.Attention, "forward", _attention_before)],
    "rms_norm": [(transformer, "_rms", _rms_before)],
    "token_loss": [
        (masked.MaskedObjective, "loss", _masked_loss_before),
        (codes, "token_cross_entropy", _cross_entropy_before),
    ],
}
REVERTED = list(PATCHES)  # --revert: the changes the "before" arm undoes


@contextmanager
def before():
    """The step's code as it was (the REVERTED changes undone), patched in for the duration."""
    patches = [patch for change in REVERTED for patch in PATCHES[change]]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, old in patches:
        setattr(owner, name, old)
    try:
        yield
    finally:
        for owner, name, now in saved:
            setattr(owner, name, now)


def step_kernels(step) -> tuple[list[tuple], list[tuple]]:
    """(mm/addmm input shapes, SDPA forward input shapes + mask) of one step, from the profiler."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    mms, sdpa = [], []
    for e in prof.events():
        if e.name in ("aten::mm", "aten::addmm"):
            mms.append((e.name, tuple(tuple(s) for s in e.input_shapes[:3])))
        elif e.name == "aten::_scaled_dot_product_flash_attention_for_cpu":
            sdpa.append(tuple(tuple(s) for s in e.input_shapes[:3]) + (tuple(e.input_shapes[5]),))
    return mms, sdpa


def kernels_alone(mms, sdpa):
    """A function that runs the step's matmuls and attention (forward + backward) alone, on fresh tensors."""
    g = torch.Generator().manual_seed(0)
    ops = []
    for name, shapes in mms:
        args = [torch.randn(s, generator=g) for s in shapes]
        ops.append(
            (lambda a: lambda: torch.addmm(*a))(args)
            if name == "aten::addmm"
            else (lambda a: lambda: a[0] @ a[1])(args)
        )
    for q, k, v, m in sdpa:
        qkv = [torch.randn(s, generator=g, requires_grad=True) for s in (q, k, v)]
        mask = torch.ones(m, dtype=torch.bool) if m else None

        def attention(qkv=qkv, mask=mask):
            y = F.scaled_dot_product_attention(*qkv, attn_mask=mask)
            y.backward(torch.ones_like(y))

        ops.append(attention)

    def run():
        for op in ops:
            op()

    return run, len(ops)


def alternate(arms: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Wall times of each arm over `repeats` rounds after `warmup`, the arms' order reversed every round."""
    times: dict[str, list[float]] = {k: [] for k in arms}
    for i in range(warmup + repeats):
        for key in list(arms) if i % 2 == 0 else list(arms)[::-1]:
            start = time.perf_counter()
            arms[key]()
            if i >= warmup:
                times[key].append(time.perf_counter() - start)
    return times


def rows_for(args) -> list[dict]:
    rows = []
    for size in args.sizes:
        for name in args.objectives:
            for tokens in (16, 64):
                obj, model_cfg, spec, x, text = study_case(name, size, tokens, args.batch, "cpu")
                flops = obj.train_flops(model_cfg, spec, STUDY_TEXT, args.batch)
                now = trainer_step(obj, model_cfg, spec, x, text, "cpu", False)
                old = trainer_step(obj, model_cfg, spec, x, text, "cpu", False)
                mms, sdpa = step_kernels(now)
                mm_flops = sum(2 * math.prod(shapes[-2]) * shapes[-1][-1] for _, shapes in mms)  # 2·m·k·n each
                mm_only = kernels_alone(mms, [])[0]
                wider = {}
                for k in args.stacked:
                    obj_k, cfg_k, spec_k, x_k, text_k = study_case(name, size, tokens, k * args.batch, "cpu")
                    wider[f"batch_x{k}"] = trainer_step(obj_k, cfg_k, spec_k, x_k, text_k, "cpu", False)
                kernels = kernels_alone(mms, sdpa)[0]

                def old_step():
                    with before():
                        old()

                # two phases, each alternating its arms and reversing their order every round (an arm that
                # always ran after another would inherit its cache and heap state)
                times = alternate({"before": old_step, "now": now}, args.repeats)
                times |= alternate(
                    {"step": now, "matmuls": mm_only, "matmuls_attention": kernels} | wider, args.repeats
                )
                t = {k: statistics.median(v) for k, v in times.items()}
                stacked = {f"stacked_x{k}_max_gain": k * t["step"] / t[f"batch_x{k}"] for k in args.stacked}
                rows.append(
                    {
                        "objective": name,
                        "size": size,
                        "img_tokens": tokens,
                        "GFLOP_step": flops / 1e9,
                        "before_ms": 1e3 * t["before"],
                        "now_ms": 1e3 * t["now"],
                        "speedup": t["before"] / t["now"],
                        # the fastest step of each arm: on a shared machine the least disturbed one
                        "speedup_of_fastest": min(times["before"]) / min(times["now"]),
                        # the median of each round's before/now: a load that drifts over the run cancels
                        "speedup_paired": statistics.median(b / n for b, n in zip(times["before"], times["now"])),
                        "step_ms": 1e3 * t["step"],  # the ceiling phase's own step time
                        "matmuls_ms": 1e3 * t["matmuls"],
                        "attention_ms": 1e3 * (t["matmuls_attention"] - t["matmuls"]),
                        "n_matmuls": len(mms),
                        "matmul_GFLOPs": mm_flops / t["matmuls"] / 1e9,
                        "matmul_share": t["matmuls"] / t["step"],
                        "matmul_attention_share": t["matmuls_attention"] / t["step"],
                        "max_speedup_left": t["step"] / t["matmuls_attention"],
                        "now_GFLOPs": flops / t["now"] / 1e9,
                    }
                    | stacked
                )
                print_table(rows[-1:], f"{name} {size} {tokens} tokens")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    names = ObjectiveConfig.names()
    ap.add_argument("--objectives", nargs="+", default=names, choices=names)
    ap.add_argument("--sizes", nargs="+", default=["2x64", "1x64"])
    ap.add_argument("--stacked", nargs="*", type=int, default=[2, 4], help="replicates per stacked step (bound)")
    ap.add_argument("--revert", nargs="*", default=list(PATCHES), choices=list(PATCHES), help="undo only these")
    args = ap.parse_args()
    REVERTED[:] = args.revert
    torch.set_num_threads(args.threads)
    heap_kept(True)  # as the trainer sets glibc's malloc on CPU
    peak = matmul_peak(torch.float32, "cpu", args.repeats)[0]
    rows = rows_for(args)
    peak = max(peak, matmul_peak(torch.float32, "cpu", args.repeats)[0])  # the better of two: a shared machine
    for r in rows:
        r["now_of_peak"] = r["now_GFLOPs"] * 1e9 / peak
        r["matmuls_of_peak"] = r["matmul_GFLOPs"] * 1e9 / peak
    print(f"float32 matmul peak (square, best of 512/1024/2048): {peak / 1e9:.1f} GFLOP/s")
    print_table(
        rows,
        f"The trainer's step before vs after this change (alternating, medians of {args.repeats}), and its "
        f"matmuls / attention kernels alone; {args.threads} thread(s)",
    )
    write_json(
        "step_ceiling_cpu",
        {
            "rows": rows,
            "peak_fp32_flops": peak,
            "threads": args.threads,
            "batch": args.batch,
            "reverted": REVERTED,
            "stacked": args.stacked,
        },
    )


if __name__ == "__main__":
    main()
