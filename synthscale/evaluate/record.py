"""One evaluation result: the contract between evaluation (which writes records) and the study (which stores,
fits, plots and reports them). A record is one (run, milestone, sampling setting, weights) and names every
instrument its numbers came from, so numbers measured differently are never compared by accident."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EvalRecord:
    # the run
    run: str  # run id (config hash of the training run)
    objective: str  # flow | masked | autoregressive
    size: str  # model size preset name
    params: int  # N: total parameters of the generator (backbone + text encoder + embeddings/heads)
    params_nonembedding: int
    data_size: int  # D: unique training items
    autoencoder: str  # autoencoder name (e.g. kl-f4c4)
    # the milestone
    milestone: int  # index of the checkpoint along the run (0 = first)
    step: int
    train_flops: float  # training FLOPs consumed at this checkpoint (analytic, 2 per MAC, fwd+bwd)
    # the sampling setting
    weights: str  # ema | raw
    steps: int  # sampling steps (flow: ODE steps; masked: decoding steps; autoregressive: image tokens)
    cfg_scale: float
    sample_flops_per_image: float  # analytic generator FLOPs per sampled image (CFG included)
    # the autoencoder decoder's FLOPs per image (latents → pixels, counted once per autoencoder); None: a record
    # written before the decoder was counted
    decode_flops_per_image: float | None = None
    # the numbers; names such as loss, fd_probe, kid, kid_std, prompt_acc, prompt_acc_lo, prompt_acc_hi,
    # attr_acc_<attribute>, task_acc_<task>, holdout_prompt_acc, latency_s, throughput_ips (the generator),
    # decode_latency_s, decode_throughput_ips (the decoder)
    metrics: dict[str, float] = field(default_factory=dict)
    # how they were measured: extractor (e.g. "probe:<hash>"), n (samples), resize, seed, split, ...
    instruments: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalRecord:
        return cls(**d)
