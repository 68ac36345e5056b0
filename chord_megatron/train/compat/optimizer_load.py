"""Loading Megatron's (distributed) optimizer state: the workarounds megatron-core 0.16.1 needs.

* loading the distributed optimizer needs its Adam states to exist already:
  `init_optimizer_states` initialises them with megatron's own dummy values;
* torch Adam's per-parameter `step` comes back as that dummy step's 1, so the saved count is
  stored separately (`adam_steps`) and written back (`set_adam_steps`): bias correction
  depends on it;
* `fully_reshardable` loading hands DistributedOptimizer._set_main_param_and_optimizer_states
  every state but torch Adam's per-parameter `step`, which that method then looks up (KeyError
  'step'): `step_passed_through` hands it the destination's own step for the load, and the
  saved count is written afterwards. tests/unit/test_compat_pins.py pins the Megatron code
  this relies on.
"""

from __future__ import annotations

import contextlib
from typing import Any, List, Mapping, Optional

import torch


def inner_optimizers(optimizer) -> List[Any]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def adam_steps(optimizer) -> List[Optional[float]]:
    """The Adam step count of each inner optimizer (None where no state exists yet): per
    parameter in torch's Adam/AdamW, per param group in transformer-engine's and apex's
    FusedAdam (what megatron-core picks on a GPU with TE; tests/dist/test_fused_adam_resume.py)."""
    out = []
    for opt in inner_optimizers(optimizer):
        steps = {float(s["step"]) for s in opt.optimizer.state.values() if "step" in s}
        steps |= {float(g["step"]) for g in opt.optimizer.param_groups if g.get("params") and g.get("step")}
        out.append(max(steps) if steps else None)
    return out


def set_adam_steps(optimizer, steps: List[Optional[float]]) -> None:
    for opt, step in zip(inner_optimizers(optimizer), steps):
        if step is None:
            continue
        for state in opt.optimizer.state.values():
            if "step" in state:
                state["step"] = torch.tensor(step, dtype=torch.float32)
        for group in opt.optimizer.param_groups:
            if "step" in group:
                group["step"] = step


def is_distributed(optimizer) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return any(isinstance(opt, DistributedOptimizer) for opt in inner_optimizers(optimizer))


def load_optimizer(optimizer, state: Mapping[str, Any], optimizer_format: str, adam_steps) -> None:
    """optimizer.load_state_dict, then the saved Adam step counts (see the module doc)."""
    with step_passed_through(optimizer) if optimizer_format == "fully_reshardable" else contextlib.nullcontext():
        optimizer.load_state_dict(state)
    set_adam_steps(optimizer, adam_steps)


@contextlib.contextmanager
def step_passed_through(optimizer):
    """While loading a `fully_reshardable` state: megatron-core 0.16.1's
    load_parameter_state_from_fully_reshardable hands _set_main_param_and_optimizer_states
    every saved state except "step", which that method then copies for every key of the
    destination (KeyError 'step' with torch Adam, whose per-parameter state holds a step).
    Hand it the destination's own step (copied onto itself); the caller then writes the
    saved count. Instance attributes only, removed on exit."""
    patched = []
    for opt in inner_optimizers(optimizer):
        original = getattr(opt, "_set_main_param_and_optimizer_states", None)
        if original is None:
            continue

        def set_states(model_param, tensors, _original=original, _opt=opt):
            if "step" not in tensors:
                group_index, group_order = _opt.model_param_group_index_map[model_param]
                main_param = _opt.optimizer.param_groups[group_index]["params"][group_order]
                step = _opt.optimizer.state.get(main_param, {}).get("step")
                if step is not None:
                    tensors = {**tensors, "step": step}
            _original(model_param, tensors)

        opt._set_main_param_and_optimizer_states = set_states
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states


def init_optimizer_states(optimizer) -> None:
    """Create Adam states where none exist yet, so that loading has tensors to fill."""
    for opt in inner_optimizers(optimizer):
        if len(opt.optimizer.state) == 0 and hasattr(opt, "_init_optimizer_states_with_dummy_values"):
            opt._init_optimizer_states_with_dummy_values()
