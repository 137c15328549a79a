"""The GPU performance path, checked on CPU: the static KV cache and the compiled decode step give the
recomputation's tokens, TF32 only touches CUDA runs, and benchmarks/gpu.py runs end to end in quick mode."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from synthscale.config import ModelConfig, ObjectiveConfig
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.model.transformer import KVCache
from synthscale.objectives import get_objective
from synthscale.train.distributed import enable_tf32

BENCH = Path(__file__).parents[1] / "benchmarks"


def tiny_ar():
    obj = get_objective(ObjectiveConfig.of("autoregressive"))
    torch.manual_seed(0)
    model = obj.build_model(
        ModelConfig(size="2x64"), LatentSpec("discrete", 6, 4, 4, vocab_size=64), TextSpec(vocab_size=32, max_length=8)
    ).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the zero-initialised head: varied, confident logits
            p.normal_(0, 0.3)
    text = torch.randint(3, 32, (3, 8), generator=torch.Generator().manual_seed(1))
    text[:, 5:] = 0  # padded captions: pad keys must stay hidden in the static cache too
    return obj, model, text


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_static_cache_sampling_equals_recomputation(cfg_scale):
    obj, model, text = tiny_ar()
    reference = obj.sample(model, text, 16, cfg_scale, torch.Generator().manual_seed(7), kv_cache=False)
    static = obj.sample(model, text, 16, cfg_scale, torch.Generator().manual_seed(7), static_cache=True)
    assert torch.equal(static, reference)
    assert reference.unique().numel() > 4


def test_static_cache_keeps_its_shapes_and_position():
    cache = KVCache(depth=2, max_len=6, static=True)
    k = torch.randn(1, 2, 4, 8)
    keys, _ = cache.update(0, k, k)
    assert keys.shape == (1, 2, 6, 8) and torch.equal(keys[:, :, :4], k) and not keys[:, :, 4:].any()
    cache.advance(4)
    pos = cache.pos
    keys, _ = cache.update(1, k[:, :, :1], k[:, :, :1])
    cache.advance(1)
    assert keys.shape == (1, 2, 6, 8) and torch.equal(keys[:, :, 4], k[:, :, 0])
    assert cache.pos is pos and cache.pos.item() == 5  # the same tensor, moved in place
    with pytest.raises((IndexError, RuntimeError)):  # past the end
        cache.update(0, k[:, :, :2], k[:, :, :2])


@pytest.mark.slow
def test_compiled_decode_step_equals_recomputation():
    """One fullgraph compilation (no graph break) serves every position and gives the same tokens."""
    obj, model, text = tiny_ar()
    reference = obj.sample(model, text, 16, 3.0, torch.Generator().manual_seed(7), kv_cache=False)
    for _ in range(2):  # the second call reuses the compiled step
        compiled = obj.sample(model, text, 16, 3.0, torch.Generator().manual_seed(7), compiled=True)
        assert torch.equal(compiled, reference)


def test_tf32_only_for_cuda_runs():
    before = torch.get_float32_matmul_precision()
    try:
        enable_tf32(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == before == "highest"
        enable_tf32(torch.device("cuda"))  # only sets a flag: no GPU needed to check it
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_gpu_benchmark_quick_mode_on_cpu(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "gpu.json"
    result = bench.main(["--quick", "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text())["training"] == result["training"]
    assert result["peak_bf16_flops"] > 0 and not result["skipped"]
    train = {(r["objective"], r["size"]): r for r in result["training"]}
    assert set(train) == {(o, s) for o in bench.OBJECTIVES for s in bench.QUICK["sizes"]}
    for r in train.values():
        assert "error" not in r and r["eager_mfu"] > 0 and math.isfinite(r["eager_mfu"]) and r["sdpa"]
    steps = {(r["objective"], r["size"], r["steps"]) for r in result["sampling"]}
    for size in bench.QUICK["sizes"]:
        assert {("flow", size, k) for k in bench.QUICK["flow_steps"]} <= steps
        assert {("masked", size, k) for k in bench.QUICK["masked_steps"]} <= steps
        assert ("autoregressive", size, bench.QUICK["side"] ** 2) in steps
    assert all(r["images_per_s"] > 0 and r["latency_ms"] > 0 for r in result["sampling"])
    # a measurement that fails is recorded, not fatal
    row = {}
    with bench.recorded(row):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    assert row["error"].startswith("OutOfMemoryError")


@pytest.mark.slow
def test_gpu_benchmark_runs_every_stage_on_the_device(tmp_path, monkeypatch):
    """benchmarks/gpu.py --stages: a tiny study with every stage on the given device (here the CPU, ~1.5 min)."""
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.device_stages(torch.device("cpu"), tmp_path / "study")
    assert result["ok"] and result["stages_failed"] == 0 and result["record_devices"] == ["cpu"]
    assert set(result["seconds_by_kind"]) >= {"autoencoder", "instrument", "cache", "train", "evaluate"}
