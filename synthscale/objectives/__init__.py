"""The objectives on the shared backbone, by name. Callers use `get_objective(cfg)` and the `Objective` methods
only; nothing above this package branches on the objective's name.

`OBJECTIVES` is the one list of objective names: config reading (the schema names no objective; this registry plugs
itself into it below), the study's latent map, the CLI's choices and the report's order all read it. Adding an
objective is one file declaring an `Objective` subclass (name, latent kind, config dataclass, network, loss,
sampler, FLOPs) and one entry below."""

from __future__ import annotations

from synthscale.config import ConfigError, ObjectiveConfig, set_objective_registry
from synthscale.objectives.autoregressive import AutoregressiveObjective
from synthscale.objectives.base import Objective
from synthscale.objectives.flow import FlowObjective
from synthscale.objectives.masked import MaskedObjective

# Bump when a change alters what a trained generator computes (backbone, embeddings, loss, sampler). Study train
# stages are keyed by it, so a study folder made by older code trains again instead of mixing old and new numbers.
# 1: the first release; 2: exact (erf) GELU in the MLP.
GENERATOR_VERSION = 2

# The registry, in display order.
OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (
        FlowObjective,
        MaskedObjective,
        AutoregressiveObjective,
    )
}

set_objective_registry(lambda: {name: objective.config for name, objective in OBJECTIVES.items()})


def get_objective(cfg: ObjectiveConfig | str) -> Objective:
    """The objective `cfg.name` configured by `cfg` (a bare name gets that objective's default config)."""
    name = cfg if isinstance(cfg, str) else cfg.name
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; valid objectives: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](None if isinstance(cfg, str) else cfg)


def check_names(names: list[str], what: str = "objectives") -> None:
    """ConfigError naming the first of `names` that is not a registered objective, and the valid ones."""
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"{what}: {unknown[0]!r} is not an objective; valid objectives: {', '.join(OBJECTIVES)}")


def by_paradigm(names: list[str]) -> dict[str, str]:
    """Paradigm ("diffusion", "masked-token", "next-token") → the first of `names` (registered objectives) that
    declares it: the objective that stands for the paradigm in the study's findings."""
    out: dict[str, str] = {}
    for name in names:
        if name in OBJECTIVES:
            out.setdefault(OBJECTIVES[name].paradigm, name)
    return out


def latent_kind(name: str) -> str:
    """ "continuous" or "discrete": the latents objective `name` reads."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; valid objectives: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name].latent


__all__ = ["Objective", "OBJECTIVES", "by_paradigm", "check_names", "get_objective", "latent_kind"]
