"""A model fresh from model.hf_path (or a random init) is saved, resumed and exported before its
first update: megatron-core's distributed optimizer has no state to save then, so the checkpoint
records that it holds none, and loading it starts Adam afresh (train/checkpoint.py)."""

from pathlib import Path

from tests.support.hf_models import config_for, make_checkpoint


def _job(folder, root):
    import contextlib
    import io

    import torch
    from safetensors.torch import load_file

    from chord_megatron.commands.export_hf import run_export_hf
    from chord_megatron.data import ExpertRow
    from chord_megatron.data.batch import build_train_batch
    from chord_megatron.hf.export import ExportTargetError
    from chord_megatron.hf.weights import hf_state_dict
    from chord_megatron.train.compat.optimizer_load import is_distributed
    from chord_megatron.train.engine import MegatronEngine
    from chord_megatron.weight_sync.disk import read_hf_checkpoint

    root = Path(root)
    cfg = config_for(folder)
    fresh = MegatronEngine(cfg, full_state_dict=hf_state_dict(cfg))
    r = {"distributed": is_distributed(fresh.optimizer)}
    r["saved"] = Path(fresh.save(str(root / "ckpt"))).name

    # export-hf of that checkpoint: the very tensors of the source checkpoint
    assert run_export_hf(cfg, str(root / "ckpt"), str(root / "exported")) == 0
    exported = read_hf_checkpoint(root / "exported")
    source = load_file(str(Path(folder) / "model.safetensors"))
    source = {n: t for n, t in source.items() if not (cfg.model.tie_embeddings and n == "lm_head.weight")}
    r["export_exact"] = sorted(exported) == sorted(source) and all(torch.equal(exported[n], source[n]) for n in source)
    # a second export into the same OUT is refused, unless --overwrite, which says what it replaced
    try:
        run_export_hf(cfg, str(root / "ckpt"), str(root / "exported"))
    except ExportTargetError as e:
        r["refused"] = str(e)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_export_hf(cfg, str(root / "ckpt"), str(root / "exported"), overwrite=True)
    r["overwrite_said"] = printed.getvalue()

    # resumed from it (onto a random init), the first update is the fresh engine's, bit for bit
    resumed = MegatronEngine(cfg)
    r["step"], _ = resumed.load(str(root / "ckpt"))
    batch = build_train_batch([], torch.zeros(0), [ExpertRow(list(range(3, 9)), list(range(10, 18)))] * 4, pad_id=0)
    for engine in (fresh, resumed):
        engine.train_step(batch, 0, mu=1.0)
    a, b = dict(fresh.export_weights()), dict(resumed.export_weights())
    r["resume_exact"] = sorted(a) == sorted(b) and all(torch.equal(a[n], b[n]) for n in a)
    r["moved"] = any(not torch.equal(a[n], t) for n, t in hf_state_dict(cfg).items())
    # and after that update a checkpoint holds the optimizer state again, and loads it
    fresh.save(str(root / "ckpt"))
    again = MegatronEngine(cfg)
    r["step_after"], _ = again.load(str(root / "ckpt"), load_optimizer=True)
    return r


def test_a_fresh_model_saves_exports_and_resumes_before_its_first_update(tmp_path):
    from tests.support.dist_harness import run_job

    folder, _ = make_checkpoint(tmp_path / "m", "qwen2")
    r = run_job(_job, world=1, args=(str(folder), str(tmp_path)), timeout=300)[0]
    assert r["distributed"]  # the optimizer whose state_dict asserts before the first step
    assert r["saved"] == "step_00000000"
    assert r["export_exact"]
    out = tmp_path / "exported"
    assert r["refused"].startswith(f"OUT {out} is not empty (")
    assert (
        r["overwrite_said"]
        .splitlines()[1]
        .startswith(f"--overwrite: replaced what {out} held: chat_template.jinja, config.json, ")
    )
    assert r["step"] == 0 and r["resume_exact"] and r["moved"]
    assert r["step_after"] == 1
