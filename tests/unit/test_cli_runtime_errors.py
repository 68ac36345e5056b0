"""What a new user hits at run time ends in one line naming the culprit, with its exit code and
no traceback (issue #16 item 3): checkpoint and export paths, a misspelt reward, a folder that
is not a Hugging Face checkpoint, an SGLang URL that does not answer as one, a JSON file with a
fault at some line and column. Everything goes through the real `chord` command."""

import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.chord_cli import DEMO, chord
from tests.support.hf_models import make_checkpoint


def last_line(out, code=2):
    assert out.returncode == code, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return out.stderr.strip().splitlines()[-1].removeprefix("[rank0]: ")


def test_a_checkpoint_path_that_holds_none_is_named_before_any_model_is_built(tmp_path):
    missing = tmp_path / "no-such-run"
    line = f"chord: checkpoint: {missing}: neither a checkpoint nor a checkpoint root with a 'latest' file"
    assert last_line(chord("eval", DEMO, "--checkpoint", missing, check=False)) == line
    assert last_line(chord("export-hf", DEMO, missing, tmp_path / "out", check=False)) == line
    # a root whose `latest` names a step folder that is gone
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "latest").write_text("step_000007\n")
    out = chord("export-hf", DEMO, tmp_path / "root", tmp_path / "out", check=False)
    pointer = tmp_path / "root" / "latest"
    assert (
        last_line(out)
        == f"chord: checkpoint: {pointer} names {tmp_path / 'root' / 'step_000007'}, which holds no checkpoint"
    )
    assert not (tmp_path / "out").exists()


def test_an_export_folder_under_a_file_is_refused_naming_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("the user's")
    out = chord("export-hf", DEMO, tmp_path / "ckpt", tmp_path / "notes.txt" / "hf", check=False)
    assert last_line(out) == (
        f"chord: export-hf: OUT {tmp_path / 'notes.txt' / 'hf'}: {tmp_path / 'notes.txt'} is a file, not a folder"
    )
    assert (tmp_path / "notes.txt").read_text() == "the user's"


def test_an_unknown_reward_stops_the_run_before_the_base_model_is_trained(tmp_path):
    cache = tmp_path / "base-cache"
    out = chord(
        "train",
        DEMO,
        "data.reward=mathh",
        f"base.cache_dir={cache}",
        f"train.output_dir={tmp_path / 'run'}",
        check=False,
    )
    assert last_line(out) == (
        "chord: config error: data.reward: unknown reward 'mathh' (registered: arith, exact_match, math, tool_call)"
    )
    assert not cache.exists()  # the base stage never started
    out = chord("eval", DEMO, "data.reward=mathh", f"base.cache_dir={cache}", check=False)
    assert last_line(out).startswith("chord: config error: data.reward: unknown reward 'mathh'")
    assert not cache.exists()


def model_overrides(folder):
    """The model section of a checkpoint, as a user's overrides would spell it."""
    from chord_megatron.hf.config import model_config_from_hf

    m = model_config_from_hf(folder, max_seq_length=256)
    return [f"model.{k}={v}" for k, v in dataclasses.asdict(m).items() if v is not None]


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("hf") / "qwen2", "qwen2")[0]


def test_a_folder_that_is_not_a_usable_hugging_face_checkpoint_is_one_line(tmp_path, qwen2):
    import shutil

    def train(folder, *extra):
        run = tmp_path / f"run-{folder.name}"
        return chord(
            "train", DEMO, *extra, f"model.hf_path={folder}", "data.task=arith", f"train.output_dir={run}", check=False
        )

    empty = tmp_path / "empty"
    empty.mkdir()
    assert last_line(train(empty)) == (
        f"chord: HFCheckpointError: {empty}: no config.json (model.hf_path must be a local Hugging Face folder)"
    )
    section = model_overrides(qwen2)
    no_weights = tmp_path / "no-weights"
    shutil.copytree(qwen2, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    assert last_line(train(no_weights, *section)) == f"chord: HFCheckpointError: {no_weights}: no *.safetensors weights"
    gpt2 = tmp_path / "gpt2"
    shutil.copytree(qwen2, gpt2)
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    assert "model_type 'gpt2' is not supported (supported: " in last_line(train(gpt2, *section))
    broken = tmp_path / "broken"
    shutil.copytree(qwen2, broken)
    text = json.dumps(config, indent=2).splitlines()
    n = next(i for i, line in enumerate(text) if line.endswith('",'))  # a string value, more to follow
    text[n] += ","  # a stray second comma, the last character of line n + 1
    (broken / "config.json").write_text("\n".join(text))
    assert last_line(train(broken)) == (
        f"chord: HFCheckpointError: {broken / 'config.json'}:{n + 1}:{len(text[n])}: not valid JSON "
        "(Expecting property name enclosed in double quotes)"
    )


class _NotARouter(BaseHTTPRequestHandler):
    """Answers every GET with a web page, as a wrong URL (another service) would."""

    def do_GET(self):
        body = b"<html>welcome</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_sglang_url_that_does_not_answer_as_sglang_is_one_line(tmp_path):
    from chord_megatron.net import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    common = ["rollout.engine=sglang", "base.steps=0", "train.steps=1", "--no-progress"]
    out = chord("train", DEMO, *common, f"rollout.router_url={dead}", f"train.output_dir={tmp_path / 'a'}", check=False)
    assert last_line(out, code=1) == (
        f"chord: DeploymentError: rollout.router_url {dead}: [Errno 111] Connection refused (is sglang-router running there?)"
    )
    out = chord(
        "train", DEMO, *common, f"rollout.server_urls=[{dead}]", f"train.output_dir={tmp_path / 'b'}", check=False
    )
    assert last_line(out, code=1) == (
        f"chord: DeploymentError: rollout.server_urls: {dead}: [Errno 111] Connection refused "
        "(is the SGLang server running there?)"
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotARouter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        out = chord(
            "train", DEMO, *common, f"rollout.router_url={url}", f"train.output_dir={tmp_path / 'c'}", check=False
        )
    finally:
        server.shutdown()
    assert (
        last_line(out, code=1)
        == f"chord: DeploymentError: rollout.router_url {url}: GET /workers: not JSON (is it an sglang-router?)"
    )


def test_a_json_data_file_error_names_line_and_column(tmp_path):
    rows = tmp_path / "rows.json"
    line2 = ' {"problem": "1+1", "solution": "2" "answer": "2"}]'
    rows.write_text('[{"problem": "1+2", "solution": "3", "answer": "3"},\n' + line2 + "\n")
    out = chord("data", "prep-openr1", rows, tmp_path / "out", check=False)
    column = line2.index('"answer"') + 1
    assert last_line(out) == f"chord: data error: {rows}:2:{column}: not valid JSON (Expecting ',' delimiter)"
    # a JSONL data file: the fault's own column, on its own line
    jsonl = tmp_path / "prompts.jsonl"
    line2 = '{"prompt": "1+2=", "answer": "3"} trailing'
    jsonl.write_text('{"prompt": "12+30=", "answer": "42"}\n' + line2 + "\n")
    out = chord("eval", DEMO, "--data", jsonl, "base.steps=0", check=False)
    column = line2.index("trailing") + 1
    assert last_line(out) == f"chord: data error: {jsonl}:2: not valid JSON (Extra data at column {column})"
