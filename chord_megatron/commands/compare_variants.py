"""The methods `chord compare` runs, as overrides of the user's config, and the axes of its grid:
learning rates (`--lr-grid`), one variant's own overrides (`--set VARIANT:key=value`), `--quick`.

Everything but the overrides (model, data, optimiser, seeds, budget) is the config's, for every
variant; the schedules scale with the run's train.steps (chord-spec.md).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

from ..config import Config, ConfigError


def variants(cfg: Config) -> Dict[str, List[str]]:
    """Override sets of the compared methods, scaled to the run's train.steps (chord-spec.md).
    Everything else (model, data, optimiser, seeds, budget) is the config's, for every variant."""
    steps = cfg.train.steps
    decay = max(1, round(2 * steps / 3))
    return {
        "grpo": ["algorithm.mu.peak=0", "algorithm.mu.valley=0", "algorithm.mu.decay=0", "algorithm.mu.warmup=0"],
        "sft": [
            "algorithm.mu.peak=1",
            "algorithm.mu.valley=1",
            "algorithm.mu.decay=0",
            "algorithm.mu.warmup=0",
            "algorithm.token_weight=none",
        ],
        "sft-then-rl": [
            f"algorithm.mu.sft_steps={steps // 2}",
            "algorithm.mu.peak=0",
            "algorithm.mu.valley=0",
            "algorithm.mu.decay=0",
            "algorithm.mu.warmup=0",
            "algorithm.token_weight=none",
        ],
        # The paper's math schedule is 0.9 -> 0.05; the floor here is 0.1, which kept the tiny
        # demo model from drifting off the expert pattern once mu was low.
        "chord-mu": [
            "algorithm.mu.peak=0.9",
            "algorithm.mu.valley=0.1",
            f"algorithm.mu.decay={decay}",
            "algorithm.mu.warmup=0",
            "algorithm.token_weight=none",
        ],
        "chord-phi": [
            "algorithm.mu.peak=0.1",
            "algorithm.mu.valley=0.1",
            "algorithm.mu.decay=0",
            "algorithm.mu.warmup=0",
            "algorithm.token_weight=p1mp",
        ],
    }


def quick_overrides(cfg: Config) -> List[str]:
    """`--quick`: a third of the steps (the variants' schedules scale with them) and three
    evaluations, enough to see which variants learn at all in a few minutes, not to rank them."""
    steps = max(3, cfg.train.steps // 3)
    return [f"train.steps={steps}", f"train.eval_every={max(1, steps // 3)}"]


def parse_lr_grid(text: str, per_variant: Mapping[str, Sequence[str]]) -> List[str]:
    """ "1e-4,3e-4,1e-3" -> the learning rates as given (they name the run folders)."""
    lrs = [x.strip() for x in text.split(",") if x.strip()]
    for x in lrs:
        try:
            ok = float(x) > 0
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError("--lr-grid", text, f"'{x}' is not a positive number")
    if len(set(map(float, lrs))) != len(lrs):
        raise ConfigError("--lr-grid", text, "a learning rate appears twice")
    clash = [n for n, extra in per_variant.items() if any(e.startswith("optim.lr=") for e in extra)]
    if clash:
        raise ConfigError("--set", f"{clash[0]}:optim.lr", "conflicts with --lr-grid: the grid sets every variant's lr")
    return lrs


def lr_overrides(cfg: Config, lr: str) -> List[str]:
    """optim.lr, and optim.min_lr scaled with it (the config's min_lr / lr ratio), so that a decaying
    schedule keeps its shape at every rate of the grid."""
    ratio = cfg.optim.min_lr / cfg.optim.lr if cfg.optim.lr else 0.0
    return [f"optim.lr={lr}", f"optim.min_lr={float(lr) * ratio:.6g}"]


def with_scaled_min_lr(cfg: Config, extra: Sequence[str]) -> List[str]:
    """A variant's own `optim.lr=X` brings optim.min_lr scaled with it, as a rate of the grid
    does (lr_overrides), unless the variant sets optim.min_lr itself: `--set grpo:optim.lr=3e-4`
    and `--lr-grid 3e-4 --variants grpo` then run the same schedule."""
    own = own_value(extra, "optim.lr", None, str)
    if own is None or any(o.startswith("optim.min_lr=") for o in extra):
        return list(extra)
    return [*extra, lr_overrides(cfg, own)[1]]


def parse_variant_overrides(items: Sequence[str], known: Sequence[str]) -> Dict[str, List[str]]:
    """`--set VARIANT:key=value` items -> {variant: [key=value, ...]}, e.g. a learning rate per
    method ("grpo:optim.lr=3e-4"), since the best one differs between them."""
    out: Dict[str, List[str]] = {}
    for item in items:
        name, sep, override = item.partition(":")
        if not sep or "=" not in override:
            raise ConfigError("--set", item, "expected VARIANT:key=value, e.g. grpo:optim.lr=3e-4")
        if name not in known:
            raise ConfigError("--set", item, f"unknown variant '{name}'; known: {', '.join(known)}")
        out.setdefault(name, []).append(override)
    return out


def variant_lr(cfg: Config, extra: Sequence[str]) -> float:
    """The rate a variant ran at: its own `--set VARIANT:optim.lr=...` (the last one) or the config's."""
    return own_value(extra, "optim.lr", cfg.optim.lr, float)


def own_value(extra: Sequence[str], key: str, default, kind):
    """A variant's own value of `key` (the last `key=...` of its --set overrides), else `default`."""
    own = [o.split("=", 1)[1] for o in extra if o.startswith(f"{key}=")]
    return kind(own[-1]) if own else default
