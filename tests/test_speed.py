import time

import torch
from torch import nn

from synthscale.evaluate.speed import measure_speed


class _Model(nn.Module):
    device = torch.device("cpu")


class _Objective:
    """Samples take 2 ms per call; latents are [B, 4, 2, 2] of the batch's caption ids."""

    def sample(self, model, text, steps, cfg_scale, gen):
        time.sleep(0.002)
        return text[:, :1, None, None].float().expand(-1, 4, 2, 2)


def test_speed_times_the_decoder_apart_from_the_generator():
    decoded = []

    def decode(latents):
        time.sleep(0.02)  # 10× the generator: the decoder's column must show it, not the generator's
        decoded.append(latents.shape)
        return latents

    text = torch.arange(6).reshape(3, 2)
    out = measure_speed(_Objective(), _Model(), text, 4, 1.0, batch_sizes=(1, 2), repeats=2, decode=decode)
    assert set(out) == {"latency_s", "throughput_ips", "throughput_batch", "decode_latency_s", "decode_throughput_ips"}
    assert out["latency_s"] < 0.015 < 0.02 <= out["decode_latency_s"]  # each timed on its own
    assert decoded[0] == (1, 4, 2, 2) and decoded[-1] == (2, 4, 2, 2)  # it decodes what the sampler produced
    assert "decode_latency_s" not in measure_speed(_Objective(), _Model(), text, 4, 1.0, batch_sizes=(1,), repeats=1)
