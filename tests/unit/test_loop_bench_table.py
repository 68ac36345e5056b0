"""The README's loop-speed table is what the committed results file gives (never typed by hand),
and the table says what each record says."""

from pathlib import Path

from chord_megatron.metrics.loop_bench_table import BEGIN, END, markdown_table, read_records, readme_block

ROOT = Path(__file__).resolve().parents[2]
RESULTS = "results/loop_bench.jsonl"


def test_readme_block_is_generated_from_the_results_file():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(BEGIN) : readme.index(END) + len(END)]
    assert block == readme_block(RESULTS, ROOT), (
        "regenerate it: chord report results/loop_bench.jsonl --readme README.md"
    )


def test_a_row_carries_the_records_numbers():
    record = {
        "command": "chord bench loop configs/demo.yaml optim.lr=3e-4 --steps 30 --vs-trl",
        "cpu": "Some CPU",
        "torch_threads": 2,
        "commit": "abc123",
        "steps_per_s": 20.0,
        "steps_per_s_runs": [19.0, 20.0, 21.5],
        "eval_accuracy": {"0": {"0": 0.5, "30": 0.75}},
        "chord_over_trl": 0.5,
        "trl": {"steps_per_s": 40.0, "steps_per_s_runs": [39.0, 41.0], "eval_accuracy": {"0": {"0": 0.5, "30": 0.8}}},
    }
    row = markdown_table([record]).splitlines()[-1]
    assert row == (
        "| `optim.lr=3e-4 --steps 30 --vs-trl` | Some CPU, 2, 2 | `abc123` | 20.0 (19.0–21.5) | 40.0 (39.0–41.0) | 0.50× | "
        "0.750, 0.800 |"
    )
    # chord's trainer on train.cpu_threads, TRL on the bench process's threads
    row = markdown_table([{**record, "chord_torch_threads": 1}]).splitlines()[-1]
    assert "| Some CPU, 1, 2 |" in row


def test_a_seeded_row_gives_each_sides_accuracy_over_the_seeds():
    """Two runs of each of three seeds: one value per seed (a seed's runs sample identically),
    mean ± std over the seeds, computed here from the values themselves."""
    import statistics

    chord = {1: 0.70, 2: 0.80, 3: 0.95}
    trl = {1: 0.75, 2: 0.85, 3: 0.85}
    run_seeds = [1, 2, 3, 1, 2, 3]
    record = {
        "command": "chord bench loop configs/demo.yaml --steps 30 --seeds 3 --vs-trl",
        "cpu": "Some CPU",
        "torch_threads": 1,
        "commit": "abc123",
        "steps_per_s": 20.0,
        "steps_per_s_runs": [20.0] * 6,
        "run_seeds": run_seeds,
        "eval_accuracy": {str(i): {"0": 0.5, "30": chord[s]} for i, s in enumerate(run_seeds)},
        "chord_over_trl": 1.0,
        "trl": {
            "steps_per_s": 20.0,
            "steps_per_s_runs": [20.0] * 6,
            "eval_accuracy": {str(i): {"0": 0.5, "30": trl[s]} for i, s in enumerate(run_seeds)},
        },
    }
    row = markdown_table([record]).splitlines()[-1]
    c, t = list(chord.values()), list(trl.values())
    want_c = f"{statistics.mean(c):.3f} ± {statistics.stdev(c):.3f} (3 seeds)"
    want_t = f"{statistics.mean(t):.3f} ± {statistics.stdev(t):.3f} (3 seeds)"
    assert row.endswith(f"| {want_c}, {want_t} |"), row


def test_chord_report_writes_the_block_from_a_loop_bench_file(tmp_path, capsys):
    import shutil

    from chord_megatron.cli import main

    shutil.copy(ROOT / RESULTS, tmp_path / "bench.jsonl")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{BEGIN}\nold\n{END}\nafter\n")
    assert main(["report", str(tmp_path / "bench.jsonl"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text == f"# x\n{readme_block(str(tmp_path / 'bench.jsonl'))}\nafter\n" and "old" not in text
    assert main(["report", str(tmp_path / "bench.jsonl")]) == 0  # no --readme: the table is printed
    assert markdown_table(read_records(tmp_path / "bench.jsonl")) in capsys.readouterr().out
    assert main(["report", str(tmp_path / "bench.jsonl"), "--doc", str(tmp_path / "d.md")]) != 0
    assert "--doc: " in capsys.readouterr().err  # one line naming the flag, nothing written
    readme.write_text("no markers\n")
    assert main(["report", str(tmp_path / "bench.jsonl"), "--readme", str(readme)]) != 0
    assert "has no <!-- loop-bench --> ... <!-- /loop-bench --> markers" in capsys.readouterr().err
    assert readme.read_text() == "no markers\n" and not (tmp_path / "d.md").exists()
