"""`chord compare --seeds N --lr-grid a,b`: the runs it starts, the records it appends to a results
file, and the tables `chord report` makes of them, with the training processes replaced by a
stand-in whose final accuracy is a known function of (variant, lr, seed)."""

import json
import pathlib
import statistics

import pytest
import torch

from chord_megatron.commands import compare
from chord_megatron.commands.compare import run_compare
from chord_megatron.commands.compare_variants import lr_overrides, parse_lr_grid, quick_overrides
from chord_megatron.config import ConfigError, load_config
from chord_megatron.metrics.results import Stats, ordering, read_results, separations, thinned
from tests.support.fake_trainer import started

OVERRIDES = ["train.steps=6", "train.eval_every=3", "optim.lr=1e-3", "optim.min_lr=1e-4"]


def accuracy(variant, lr, seed):
    """The stand-in's final accuracy: grpo prefers the larger lr, sft the smaller; seeds spread it."""
    k = seed - 1234
    return {"grpo": 0.30 + 100 * lr + 0.01 * k, "sft": 0.60 - 100 * lr + 0.03 * k}[variant]


def fake_train(calls):
    def train(cmd):
        calls.append(cmd)
        arg = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in cmd if "=" in a}
        variant = "sft" if "algorithm.mu.peak=1" in cmd else "grpo"
        lr, seed, out = float(arg["optim.lr"]), int(arg["train.seed"]), pathlib.Path(arg["train.output_dir"])
        rows = [{"step": 0, "eval/accuracy": 0.25, "eval/response_length": 2.0}]
        rows += [{"step": s, "entropy/rl": 0.1 * s, "tokens/rl": 10} for s in range(6)]
        rows += [{"step": 6, "eval/accuracy": accuracy(variant, lr, seed), "eval/response_length": 3.0}]
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return 0

    return train


def test_grid_runs_every_cell_records_it_and_reports_the_best_lr(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare, "start_trainer", started(fake_train(calls)))
    cfg = load_config(None, OVERRIDES)
    results = tmp_path / "results" / "demo.jsonl"
    report = run_compare(
        "none.yaml",
        OVERRIDES,
        cfg,
        tmp_path / "cmp",
        ["grpo", "sft"],
        progress=False,
        seeds=[1234, 1235, 1236],
        lrs=["1e-3", "2e-3"],
        record=results,
        experiment="t",
        command="chord compare none.yaml --seeds 3 --lr-grid 1e-3,2e-3",
    )
    assert len(calls) == 2 * 2 * 3
    first = calls[0]
    assert "optim.lr=1e-3" in first and "optim.min_lr=0.0001" in first and "train.seed=1234" in first
    assert f"train.output_dir={tmp_path / 'cmp' / 'grpo' / 'lr1e-3' / 'seed1234'}" in first
    assert "optim.min_lr=0.0002" in calls[2]  # seed-major order: grpo, sft at 1e-3, then at 2e-3

    records = read_results(results)
    assert len(records) == 12
    r = records[0]
    for key in ("cpu", "torch_threads", "commit", "date", "wall_s"):
        assert key in r, key
    assert r["trainer_threads"] == (cfg.train.cpu_threads or torch.get_num_threads())  # the child's, not compare's
    assert r["final_accuracy"] == pytest.approx(accuracy("grpo", 1e-3, 1234))
    assert r["base_accuracy"] == 0.25 and r["curves"]["entropy/rl"][0] == [0, 0.0]

    text = report.read_text()
    grpo = [accuracy("grpo", 2e-3, s) for s in (1234, 1235, 1236)]  # grpo's best lr: 2e-3
    sft = [accuracy("sft", 1e-3, s) for s in (1234, 1235, 1236)]  # sft's: 1e-3
    assert f"| grpo | 2e-3 | {statistics.mean(grpo):.3f} ± {statistics.stdev(grpo):.3f} |" in text
    assert f"| sft | 1e-3 | {statistics.mean(sft):.3f} ± {statistics.stdev(sft):.3f} |" in text
    # sft 0.53 ± 0.03 against grpo 0.51 ± 0.01: the intervals overlap, so not separated
    assert "sft (0.530 ± 0.030) ≈ grpo (0.510 ± 0.010)" in text
    assert "| grpo | 0.410 ± 0.010 | 0.510 ± 0.010 |" in text  # the grid table, lr 1e-3 then 2e-3
    assert "Base model: 0.250 ± 0.000" in text
    assert (tmp_path / "cmp" / "curves.png").stat().st_size > 10_000

    # a rerun of the same grid finds every run finished and supersedes the records, not doubling them
    calls.clear()
    run_compare(
        "none.yaml",
        OVERRIDES,
        cfg,
        tmp_path / "cmp",
        ["grpo", "sft"],
        progress=False,
        seeds=[1234, 1235, 1236],
        lrs=["1e-3", "2e-3"],
        record=results,
        experiment="t",
    )
    assert calls == [] and len(results.read_text().splitlines()) == 24 and len(read_results(results)) == 12


def test_ordering_separates_only_beyond_one_std_each():
    a, b, c = Stats((0.8, 0.82, 0.84)), Stats((0.5, 0.52, 0.54)), Stats((0.49, 0.51, 0.53))
    assert ordering({"b": b, "a": a, "c": c}) == ("a (0.820 ± 0.020) > b (0.520 ± 0.020) ≈ c (0.510 ± 0.020)")
    assert "≈" in ordering({"x": Stats((0.9,)), "y": Stats((0.1,))})  # one seed: no spread, no claim


def test_separations_name_pairs_that_a_wide_neighbour_hides():
    top, wide, low = Stats((0.70, 0.80)), Stats((0.10, 0.80)), Stats((0.10, 0.12))
    means = {"low": low, "top": top, "wide": wide}
    assert ordering(means).count("≈") == 2  # top ≈ wide ≈ low ...
    assert separations(means) == "top > low"  # ... but top and low are far apart
    assert separations({"x": Stats((0.9,)), "y": Stats((0.1,))}) == ""


def test_thinned_curves_are_window_means():
    recs = [{"step": s, "entropy/rl": float(s), "tokens/rl": 1} for s in range(250)]
    pts = thinned(recs, "entropy/rl", "tokens/rl")
    assert len(pts) == 84  # windows of 3
    assert pts[0] == [2, 1.0] and pts[-1] == [249, 249.0]  # the last window holds one value
    assert thinned([{"step": 0, "entropy/rl": 1.0, "tokens/rl": 0}], "entropy/rl", "tokens/rl") == []


def test_bad_grids_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"--lr-grid: 1e-3,x: 'x' is not a positive number"):
        parse_lr_grid("1e-3,x", {})
    with pytest.raises(ConfigError, match="appears twice"):
        parse_lr_grid("1e-3,0.001", {})
    with pytest.raises(ConfigError, match="conflicts with --lr-grid"):
        parse_lr_grid("1e-3", {"grpo": ["optim.lr=3e-4"]})


def test_quick_is_a_third_of_the_steps():
    cfg = load_config("configs/demo.yaml", [])
    assert quick_overrides(cfg) == [f"train.steps={cfg.train.steps // 3}", f"train.eval_every={cfg.train.steps // 9}"]
    assert lr_overrides(load_config(None, ["optim.lr=1e-3", "optim.min_lr=0"]), "3e-4") == [
        "optim.lr=3e-4",
        "optim.min_lr=0",
    ]


def test_the_command_line_quick_grid_records_what_it_ran(tmp_path, monkeypatch, capsys):
    from chord_megatron.cli import main

    calls = []
    monkeypatch.setattr(compare, "start_trainer", started(fake_train(calls)))
    results = tmp_path / "r.jsonl"
    argv = ["compare", "configs/demo.yaml", "train.steps=18", "--variants", "grpo,sft", "--seeds", "2"]
    argv += ["--lr-grid", "1e-3,2e-3", "--quick", "--record", str(results), "--out", str(tmp_path / "o")]
    assert main([*argv, "--no-progress"]) == 0
    assert len(calls) == 8 and all("train.steps=6" in c and "train.eval_every=2" in c for c in calls)
    records = read_results(results)
    assert len(records) == 8
    assert {(r["variant"], r["seed"], r["lr"]) for r in records} == {
        (v, s, lr) for v in ("grpo", "sft") for s in (1234, 1235) for lr in (1e-3, 2e-3)
    }
    r = records[0]
    assert r["quick"] is True and r["steps"] == 6 and r["experiment"] == "demo train.steps=18 (quick)"
    assert r["command"] == (
        "chord compare configs/demo.yaml train.steps=18 --seeds 2 --lr-grid 1e-3,2e-3 --quick --variants grpo,sft"
    )
    assert "smoke reading, not a result" in (tmp_path / "o" / "compare.md").read_text()
    assert main(["compare", "configs/demo.yaml", "--seeds", "0"]) == 2
    assert "--seeds: 0: must be >= 1" in capsys.readouterr().err


def test_shards_split_one_grid_between_processes_and_record_it_as_one(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare, "start_trainer", started(fake_train(calls)))
    cfg = load_config(None, OVERRIDES)
    results = tmp_path / "r.jsonl"
    common = dict(progress=False, seeds=[1234, 1235], lrs=["1e-3", "2e-3"], record=results, experiment="t", command="c")
    for k in (1, 2):
        run_compare("none.yaml", OVERRIDES, cfg, tmp_path / f"s{k}", ["grpo", "sft"], shard=(k, 2), **common)
    cells = [(r["variant"], r["lr"], r["seed"]) for r in read_results(results)]
    assert len(cells) == 8 and len(set(cells)) == 8  # the whole 2 x 2 x 2 grid, no cell twice
    assert {r["command"] for r in read_results(results)} == {"c"}
    with pytest.raises(ConfigError, match="--shard"):
        run_compare("none.yaml", OVERRIDES, cfg, tmp_path / "x", ["grpo"], progress=False, shard=(1, 2))


def test_a_variants_own_lr_is_the_one_recorded(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare, "start_trainer", started(fake_train(calls)))
    cfg = load_config(None, OVERRIDES)
    results = tmp_path / "r.jsonl"
    run_compare(
        "configs/demo.yaml",  # read: a variant's own overrides are checked against the config first
        OVERRIDES,
        cfg,
        tmp_path / "c",
        ["grpo", "sft"],
        progress=False,
        per_variant={"grpo": ["optim.lr=3e-4", "optim.min_lr=1e-5"]},
        seeds=[1234, 1235],
        record=results,
        experiment="t",
    )
    grpo_calls = [c for c in calls if "algorithm.mu.peak=0" in c]
    assert grpo_calls and all(c.index("optim.lr=3e-4") > c.index("optim.lr=1e-3") for c in grpo_calls)
    lrs = {(r["variant"], r["seed"]): r["lr"] for r in read_results(results)}
    assert lrs == {("grpo", 1234): 3e-4, ("grpo", 1235): 3e-4, ("sft", 1234): 1e-3, ("sft", 1235): 1e-3}
    assert read_results(results)[0]["final_accuracy"] == pytest.approx(accuracy("grpo", 3e-4, 1234))


def test_a_variants_own_lr_runs_the_grids_schedule_and_names_its_folder(tmp_path, monkeypatch):
    """`--set grpo:optim.lr=3e-4` is the schedule of `--lr-grid 3e-4` (min_lr keeps the config's
    ratio to lr, here 1/10) and its runs lie under lr0.0003, not under the config's rate."""
    calls = []
    monkeypatch.setattr(compare, "start_trainer", started(fake_train(calls)))
    cfg = load_config(None, OVERRIDES)
    run_compare(
        "configs/demo.yaml",
        OVERRIDES,
        cfg,
        tmp_path / "c",
        ["grpo", "sft"],
        progress=False,
        per_variant={"grpo": ["optim.lr=3e-4"]},
        seeds=[1234],
    )
    grpo, sft = calls
    i = grpo.index("optim.lr=3e-4")
    assert grpo[i : i + 2] == lr_overrides(cfg, "3e-4") == ["optim.lr=3e-4", "optim.min_lr=3e-05"]
    assert f"train.output_dir={tmp_path / 'c' / 'grpo' / 'lr0.0003' / 'seed1234'}" in grpo
    assert f"train.output_dir={tmp_path / 'c' / 'sft' / 'lr0.001' / 'seed1234'}" in sft
    assert not any(a.startswith("optim.min_lr=3e-05") for a in sft)


def test_a_variants_own_thread_count_is_the_one_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "start_trainer", started(fake_train([])))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(None, [*OVERRIDES, "train.cpu_threads=1"])
    results = tmp_path / "r.jsonl"
    run_compare(
        "configs/demo.yaml",
        [*OVERRIDES, "train.cpu_threads=1"],
        cfg,
        tmp_path / "c",
        ["grpo", "sft"],
        progress=False,
        per_variant={"grpo": ["train.cpu_threads=3"]},
        seeds=[1234],
        record=results,
    )
    assert {r["variant"]: r["trainer_threads"] for r in read_results(results)} == {"grpo": 3, "sft": 1}


def test_a_bad_shard_is_a_one_line_error():
    from chord_megatron.commands.compare import parse_shard

    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "a/b", "2"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


def test_a_grid_says_when_the_code_changes_under_it(tmp_path, monkeypatch, capsys):
    import chord_megatron.commands.compare as compare

    calls, commits = [], iter(["aaa", "aaa", "bbb+dirty", "bbb+dirty"])
    monkeypatch.setattr(compare, "start_trainer", started(fake_train(calls)))
    monkeypatch.setattr(compare, "provenance", lambda: {"commit": next(commits), "torch_threads": 1})  # no date
    cfg = load_config(None, OVERRIDES)
    run_compare("none.yaml", OVERRIDES, cfg, tmp_path / "c", ["grpo", "sft"], progress=False, seeds=[1, 2])
    err = capsys.readouterr().err
    assert err.count("warning: the code changed") == 1 and "(aaa -> bbb+dirty)" in err
    assert "date not recorded" in (tmp_path / "c" / "compare.md").read_text()
