"""`chord export-hf` never deletes a user's folder: OUT must be new or empty (or --overwrite),
is never the model's own hf_path, and appears only complete (hf/export.py)."""

import pathlib

import pytest

from chord_megatron.cli import main
from chord_megatron.hf.export import ExportTargetError, check_export_target, export_hf
from chord_megatron.hf.weights import hf_state_dict
from tests.support.hf_models import config_for, make_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo.yaml")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny Qwen2 checkpoint with its tokenizer files: the model an export starts from."""
    return make_checkpoint(tmp_path_factory.mktemp("src") / "qwen2", "qwen2")[0]


def weights(cfg):
    return iter(dict(hf_state_dict(cfg)).items())


def files(folder: pathlib.Path):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_export_into_a_new_or_empty_folder_leaves_nothing_beside_it(tmp_path, source):
    cfg = config_for(source)
    export_hf(weights(cfg), cfg, tmp_path / "new" / "out")
    (tmp_path / "empty").mkdir()
    export_hf(weights(cfg), cfg, tmp_path / "empty")
    for out in (tmp_path / "new" / "out", tmp_path / "empty"):
        assert {"config.json", "model.safetensors.index.json", "tokenizer.json"} <= set(files(out))
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["out"]  # no temporary folder left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]


def test_a_non_empty_out_is_refused_in_one_line_and_left_alone(tmp_path, source, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    cfg = config_for(source)
    with pytest.raises(ExportTargetError):
        export_hf(weights(cfg), cfg, out)
    # the command refuses before it builds the model or reads the checkpoint
    assert main(["export-hf", DEMO, str(tmp_path / "no-such-checkpoint"), str(out)]) == 2
    assert capsys.readouterr().err == (
        f"chord: export-hf: OUT {out} is not empty (1 entry): choose a new folder, or replace it with --overwrite\n"
    )
    assert files(out) == {"notes.txt": b"the user's"}


def test_out_is_never_the_models_own_folder_even_with_overwrite(tmp_path, source, capsys):
    before = files(source)
    assert "tokenizer.json" in before
    args = ["export-hf", DEMO, str(tmp_path / "ckpt"), str(source), f"model.hf_path={source}", "--overwrite"]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"chord: export-hf: OUT {source} is model.hf_path {source}: the export would replace the files it is made "
        "from; choose another folder\n"
    )
    cfg = config_for(source)
    with pytest.raises(ExportTargetError, match="is model.hf_path"):
        export_hf(weights(cfg), cfg, source, overwrite=True)
    with pytest.raises(ExportTargetError, match="holds model.hf_path"):
        export_hf(weights(cfg), cfg, source.parent, overwrite=True)
    with pytest.raises(ExportTargetError, match=f"OUT {tmp_path / 'run'} holds the checkpoint"):
        check_export_target(tmp_path / "run", cfg, overwrite=True, checkpoint=str(tmp_path / "run" / "checkpoints"))
    assert files(source) == before


def test_overwrite_replaces_out_only_once_the_new_folder_is_complete(tmp_path, source):
    cfg = config_for(source)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old export")

    def failing():
        for i, item in enumerate(weights(cfg)):
            if i == 3:
                raise OSError("disk full")
            yield item

    with pytest.raises(OSError, match="disk full"):
        export_hf(failing(), cfg, out, overwrite=True)
    assert files(out) == {"stale.txt": b"old export"}  # a failed export changes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    export_hf(weights(cfg), cfg, out, overwrite=True)
    assert "stale.txt" not in files(out) and "config.json" in files(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_file_or_a_link_as_out_is_refused(tmp_path, source):
    cfg = config_for(source)
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "folder")
    with pytest.raises(ExportTargetError, match="is a file, not a folder"):
        check_export_target(tmp_path / "file", cfg, overwrite=True)
    with pytest.raises(ExportTargetError, match=f"is a link: give the folder itself, {tmp_path / 'folder'}"):
        check_export_target(tmp_path / "link", cfg, overwrite=True)
