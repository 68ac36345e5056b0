"""The rollout engine rollout.engine names, built from the config and serving the trainer's
architecture: in-process transformers (CPU, tests, the demo) or SGLang servers."""

from __future__ import annotations

from .engine import RolloutEngine


def rollout_engine_from_config(cfg, *, eos_token_id: int) -> RolloutEngine:
    if cfg.rollout.engine == "inprocess" and cfg.rollout.asynchronous:
        from .process import EngineProcess

        return EngineProcess(cfg, eos_token_id=eos_token_id)  # generation beside training
    if cfg.rollout.engine == "inprocess":
        from .inprocess import InProcessEngine

        return InProcessEngine.from_config(cfg, eos_token_id=eos_token_id)
    from .sglang.engine import SGLangEngine

    return SGLangEngine.from_config(cfg)
