"""`chord report`: the README's demo-results block and docs/demo-compare.md are what the command
makes of the committed results file, and the command refuses what it cannot do in one line."""

import json
import pathlib

import pytest
import torch

from chord_megatron.cli import main
from chord_megatron.metrics.results import read_results
from chord_megatron.metrics.results_report import BEGIN, END, split_experiments

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "demo.jsonl"


def _record(variant, lr, seed, acc, **extra):
    return {
        "kind": "compare-run",
        "experiment": "e",
        "command": "chord compare c.yaml --seeds 2",
        "variant": variant,
        "lr": lr,
        "seed": seed,
        "steps": 10,
        "quick": False,
        "eval_samples": 4,
        "eval_prompts": 200,
        "temperature": 1.0,
        "final_accuracy": acc,
        "base_accuracy": 0.2,
        "response_length": 3.0,
        "entropy_rl": 0.5,
        "entropy_expert": float("nan"),
        "date": "2026-12-01T00:00:00Z",
        "commit": "abc",
        "cpu": "Some CPU",
        "cores": 2,
        "torch_threads": 2,
        "curves": {"eval/accuracy": [[0, 0.2], [10, acc]], "entropy/rl": [[5, 0.5]], "entropy/expert": []},
        **extra,
    }


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_readme_block_and_doc_are_written_from_the_file(tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    _write(results, [_record("grpo", 1e-3, 1, 0.4), _record("grpo", 1e-3, 2, 0.6), _record("sft", 1e-3, 1, 0.1)])
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{BEGIN}\nold numbers\n{END}\nafter\n")
    doc = tmp_path / "docs" / "cmp.md"
    assert main(["report", str(results), "--readme", str(readme), "--doc", str(doc)]) == 0
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("# x\n\nbefore\n") and text.endswith(f"{END}\nafter\n")
    assert "| grpo | 1e-3 | 0.500 ± 0.141 | +0.300 ± 0.141 |" in text  # mean, stdev of (0.4, 0.6)
    assert "| sft | 1e-3 | 0.100 (1 seed) |" in text
    assert "Measured: 3 runs, 2026-12-01, commit abc; Some CPU, 2 cores, 2 torch threads." in text

    page = doc.read_text()
    assert "| grpo | 1e-3 | 0.500 ± 0.141 |" in page and "![curves: accuracy and entropies](cmp-e.png)" in page
    assert (doc.parent / "cmp-e.png").stat().st_size > 10_000


def test_report_refuses_in_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    results = tmp_path / "r.jsonl"
    _write(results, [_record("grpo", 1e-3, 1, 0.4)])
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    assert main(["report", str(results), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert "markers" in err and err.count("\n") == 1 and readme.read_text() == "no markers\n"
    assert main(["report", str(results), "--experiment", "nope"]) == 2
    assert "it has: e" in capsys.readouterr().err


def test_the_readme_block_is_generated_from_the_committed_results():
    from chord_megatron.commands.report import readme_block

    readme = (ROOT / "README.md").read_text()
    assert BEGIN in readme and END in readme
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    if not RESULTS.exists():
        assert "not yet measured" in block.lower()
        return
    chosen = split_experiments(read_results(RESULTS))
    want = readme_block(chosen, "results/demo.jsonl", "docs/demo-compare.md").strip()
    assert block == want, (
        "README's demo results are stale: chord report results/demo.jsonl --readme README.md --doc docs/demo-compare.md"
    )


def test_the_doc_is_generated_from_the_committed_results(tmp_path):
    if not RESULTS.exists():
        pytest.skip("no results/demo.jsonl committed yet")
    from chord_megatron.commands.report import write_doc

    chosen = split_experiments(read_results(RESULTS))
    fresh = write_doc(chosen, str(tmp_path / "demo-compare.md"), "results/demo.jsonl").read_text()
    fresh = fresh.replace(f"--doc {tmp_path / 'demo-compare.md'}", "--doc docs/demo-compare.md")
    assert (ROOT / "docs" / "demo-compare.md").read_text() == fresh


def test_a_partial_grid_says_so():
    from chord_megatron.metrics.results_report import experiment_markdown, grid_coverage

    rec = _record("grpo", 1e-3, 1, 0.4, command="chord compare c.yaml --seeds 3 --lr-grid 1e-4,3e-4,1e-3")
    assert grid_coverage([rec]) == (1, 5 * 3 * 3)
    assert "**Partial grid: 1 of the 45 runs" in experiment_markdown([rec])
    full = _record("grpo", 1e-3, 1, 0.4, command="chord compare c.yaml --variants grpo")
    assert grid_coverage([full]) == (1, 1) and "Partial" not in experiment_markdown([full])


def test_an_experiment_recorded_by_two_commands_shows_both_and_their_runs_together():
    from chord_megatron.metrics.results_report import experiment_markdown, grid_coverage

    first = "chord compare c.yaml --seeds 2 --lr-grid 3e-3 --variants sft"
    later = "chord compare c.yaml --seeds 2 --lr-grid 3e-4 --variants grpo --name e"
    records = [
        *(_record("sft", 3e-3, s, 0.8 + s / 100, command=first) for s in (1, 2)),
        *(_record("grpo", 3e-4, s, 0.1 + s / 100, command=later) for s in (1, 2)),
    ]
    text = experiment_markdown(records)
    assert f"`{first}`  \n`{later}`\n" in text
    assert "Partial" not in text  # 2 + 2 runs planned, 4 recorded
    assert "each variant at the best mean of the rates it ran of {3e-4, 3e-3} (the grid below shows which)," in text
    assert "| sft | not run | 0.815 ± 0.007 |" in text and "| grpo | 0.115 ± 0.007 | not run |" in text
    assert "**Partial grid: 3 of the 4 runs" in experiment_markdown(records[:3])
    # a third command rerunning one seed of the first (the same cells) plans nothing new
    rerun = _record("sft", 3e-3, 1, 0.81, command="chord compare c.yaml --variants sft")
    assert grid_coverage([*records[1:], rerun]) == (4, 4)
    # without --lr-grid each variant's own rate is its planned cell
    mixed = "chord compare c.yaml --seeds 2 --variants sft,grpo --set grpo:optim.lr=3e-4"
    two = [_record("sft", 3e-3, 1, 0.8, command=mixed), _record("grpo", 3e-4, 1, 0.1, command=mixed)]
    assert grid_coverage(two) == (2, 4)


def test_the_same_runs_on_another_machine_kind_are_a_reproduction_not_more_seeds(tmp_path):
    from chord_megatron.metrics.results_report import experiment_markdown

    here = [_record("sft", 1e-3, s, a, kernels="ATen AVX512") for s, a in ((1, 0.80), (2, 0.84), (3, 0.88))]
    pinned = dict(kernels="ATen AVX2 MKL_CBWR=COMPATIBLE", command="chord compare c.yaml --seeds 2 base.cache_dir=o")
    there = [_record("sft", 1e-3, 1, 0.83, **pinned), _record("sft", 1e-3, 2, 0.87, **pinned)]
    other_cpu = [_record("sft", 1e-3, 1, 0.70, cpu="Intel Xeon", kernels="ATen AVX512")]
    path = tmp_path / "r.jsonl"
    _write(path, here + there + other_cpu)
    records = read_results(path)
    assert len(records) == 6  # same experiment, variant, lr and seed: kept apart by machine kind

    text = experiment_markdown(records)
    assert "| sft | 1e-3 | 0.840 ± 0.040 |" in text  # the table: the first kind's three seeds only
    assert "Measured: 3 runs" in text
    assert "Reproduced on Some CPU (kernels ATen AVX2 MKL_CBWR=COMPATIBLE)" in text
    assert "`chord compare c.yaml --seeds 2 base.cache_dir=o`" in text
    # 0.850 there against 0.840 ± 0.040 here: within; on the same seeds here 0.820 ± 0.028
    assert "| sft | 1e-3 | 1, 2 | 0.850 ± 0.028 | 0.840 ± 0.040 | 0.820 ± 0.028 | yes |" in text
    # 0.700 is more than one std (0.040) below 0.840: not reproduced
    assert "Reproduced on Intel Xeon (kernels ATen AVX512)" in text
    assert "| sft | 1e-3 | 1 | 0.700 (1 seed) | 0.840 ± 0.040 | 0.800 (1 seed) | **no** |" in text

    # a rerun on the first kind still supersedes, not doubles
    _write(path, here + there + [_record("sft", 1e-3, 1, 0.81, kernels="ATen AVX512")])
    assert "| sft | 1e-3 | 0.843 ± 0.035 |" in experiment_markdown(read_results(path))


def test_the_trainers_thread_count_is_reported_where_recorded():
    from chord_megatron.metrics.results_report import experiment_markdown

    text = experiment_markdown([_record("grpo", 1e-3, s, 0.5, trainer_threads=1) for s in (1, 2)])
    assert "2 cores, 1 torch thread." in text


def test_the_kernel_sets_are_named_beside_the_cpu_kind():
    from chord_megatron.metrics.results_report import experiment_markdown

    records = [_record("grpo", 1e-3, 1, 0.5, kernels="ATen AVX512"), _record("grpo", 1e-3, 2, 0.5, kernels="ATen AVX2")]
    text = experiment_markdown(records)
    assert "Measured: 1 run, 2026-12-01, commit abc; Some CPU (kernels ATen AVX512), 2 cores" in text
    assert "Measured there: 1 run, 2026-12-01, commit abc; Some CPU (kernels ATen AVX2), 2 cores" in text


def test_provenance_names_the_kernels_a_pinned_environment_selects(monkeypatch):
    from chord_megatron.metrics.provenance import cpu_kernels

    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    assert cpu_kernels() == f"ATen {torch.backends.cpu.get_cpu_capability()} MKL_CBWR=COMPATIBLE"


def test_the_experiments_cost_is_its_runs_wall_times_summed_where_every_run_has_one():
    from chord_megatron.metrics.results_report import experiment_markdown

    timed = [_record("grpo", 1e-3, s, 0.5, wall_s=w) for s, w in ((1, 90.0), (2, 150.0), (3, 1560.0))]
    assert "2 torch threads; 30 min of runs (their wall times summed, base stages included)." in experiment_markdown(
        timed
    )
    untimed = [*timed[:2], _record("grpo", 1e-3, 3, 0.5)]  # one run without a wall time: no sum
    assert "min of runs" not in experiment_markdown(untimed)


def test_the_two_best_variants_are_compared_seed_by_seed():
    from chord_megatron.metrics.results import same_seed_wins
    from chord_megatron.metrics.results_report import experiment_markdown

    # mu ends above sft on two seeds, but one seed drags its mean below sft's: sft leads the pair
    mu = {1: 0.91, 2: 0.59, 3: 0.91, 4: 0.95}
    sft = {1: 0.82, 2: 0.84, 3: 0.80, 4: 0.95}
    runs = [_record(v, 1e-3, s, a) for v, acc in (("sft", sft), ("mu", mu)) for s, a in acc.items()]
    runs.append(_record("grpo", 1e-3, 5, 0.2))  # a third variant, on a seed the two do not share
    text = experiment_markdown(runs)
    assert (
        "The two best by mean, seed by seed (one base model per seed for both): "
        "sft ends above mu on 1 of 4 seeds (1 tied)." in text
    )
    chosen = {"mu": [r for r in runs if r["variant"] == "mu"], "sft": [r for r in runs if r["variant"] == "sft"][:1]}
    assert same_seed_wins(chosen) == ""  # one shared seed: nothing to say
