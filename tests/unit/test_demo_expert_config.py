"""configs/demo-expert.yaml says it is the chord-mu cell (lr 3e-3, seed 1234) of the README's
"expert needed, 1800 steps" experiment, so that `chord train` on it reproduces that recorded run.
Rebuilt here the way `chord compare` builds a cell from the recorded command's overrides."""

import dataclasses
import json
import pathlib

from chord_megatron.commands.compare_variants import lr_overrides, variants
from chord_megatron.config import load_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENT = "expert needed, 1800 steps"
NOT_TRAINING = {("train", "output_dir"), ("checkpoint", "save_every")}  # where it writes, how often it saves


def _recorded_cell():
    for line in (ROOT / "results" / "demo.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["experiment"] == EXPERIMENT and r["variant"] == "chord-mu" and r["seed"] == 1234:
            return r
    raise AssertionError(f"no chord-mu seed 1234 record of '{EXPERIMENT}' in results/demo.jsonl")


def _leaves(tree, path=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, (*path, k))
    else:
        yield path, tree


def test_the_expert_demo_is_the_recorded_chord_mu_cell():
    rec = _recorded_cell()
    assert rec["command"].split()[2] == "configs/demo.yaml" and rec["lr"] == 3e-3
    overrides = list(rec["overrides"])
    cfg = load_config(str(ROOT / "configs/demo.yaml"), overrides)
    cell = [*overrides, *variants(cfg)["chord-mu"], *lr_overrides(cfg, "3e-3"), f"train.seed={rec['seed']}"]
    want = dict(_leaves(dataclasses.asdict(load_config(str(ROOT / "configs/demo.yaml"), cell))))
    got = dict(_leaves(dataclasses.asdict(load_config(str(ROOT / "configs/demo-expert.yaml")))))
    differ = {k: (got[k], want[k]) for k in want if got[k] != want[k] and k[:2] not in NOT_TRAINING}
    assert not differ, f"configs/demo-expert.yaml departs from the recorded cell: {differ}"
