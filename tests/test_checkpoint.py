"""Checkpoint files: round trips, corruption and truncation detected, disk-full loses nothing, pruning, EMA."""

import errno
import warnings

import pytest
import torch
from torch import nn

from synthscale import atomic
from synthscale.train import checkpoint as ckpt
from synthscale.train.ema import EMA


def _groups(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)},
        "ema": {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)},
    }


def _meta(step, milestone=None, final=False):
    return {"train_flops": 100 * step, "milestone": milestone, "milestone_flops": None, "is_final": final}


def test_round_trip_is_exact(tmp_path):
    groups = _groups()
    path = ckpt.save(tmp_path / "checkpoints", 7, groups, _meta(7, milestone=0))
    meta = ckpt.read_meta(path)
    assert (
        meta["step"] == 7
        and meta["train_flops"] == 700
        and set(meta["files"]) == {"model.safetensors", "ema.safetensors"}
    )
    for name, tensors in groups.items():
        loaded = ckpt.load_tensors(path, name)
        assert loaded.keys() == tensors.keys()
        assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_optimizer_state_round_trip_gives_the_identical_next_step(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for _ in range(3):
        model(torch.randn(4, 5)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    tensors, rest = ckpt.optimizer_to_tensors(opt.state_dict())
    path = ckpt.save(tmp_path, 3, {"optimizer": tensors}, {"train_flops": 0, "optimizer": rest})
    tensors, rest = ckpt.load_tensors(path, "optimizer"), ckpt.read_meta(path)["optimizer"]
    twin = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 2))
    twin.load_state_dict(model.state_dict())
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1.0)
    twin_opt.load_state_dict(ckpt.optimizer_from_tensors(tensors, rest))
    assert twin_opt.param_groups[0]["betas"] == (0.8, 0.95)
    x = torch.randn(4, 5)
    for m, o in ((model, opt), (twin, twin_opt)):
        m(x).square().mean().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_bit_flip_is_detected_and_the_previous_checkpoint_used(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt.save(root, 2, _groups(0), _meta(2))
    newest = ckpt.save(root, 4, _groups(1), _meta(4))
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF  # inside the tensor bytes: the size stays right, only the hash can tell
    (newest / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ckpt.CorruptCheckpoint, match="sha256"):
        ckpt.read_meta(newest)
    with pytest.warns(UserWarning, match="skipping corrupt checkpoint.*step_00000004"):
        info, _ = ckpt.latest(tmp_path)
    assert info.step == 2


@pytest.mark.parametrize("damage", ["truncate", "delete-meta", "garbage-meta", "delete-file"])
def test_damaged_checkpoints_are_never_loaded(tmp_path, damage):
    root = tmp_path / "checkpoints"
    ckpt.save(root, 1, _groups(0), _meta(1))
    newest = ckpt.save(root, 3, _groups(1), _meta(3))
    if damage == "truncate":
        f = newest / "ema.safetensors"
        f.write_bytes(f.read_bytes()[:-10])
    elif damage == "delete-meta":
        (newest / "meta.json").unlink()
    elif damage == "garbage-meta":
        (newest / "meta.json").write_text("{not json")
    else:
        (newest / "model.safetensors").unlink()
    with pytest.warns(UserWarning, match="step_00000003"):
        assert [i.step for i in ckpt.list_checkpoints(tmp_path)] == [1]
    with pytest.warns(UserWarning):
        assert ckpt.latest(tmp_path)[0].step == 1


def test_disk_full_during_a_save_loses_no_earlier_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    good = ckpt.save(root, 5, _groups(0), _meta(5))
    real = atomic.save_safetensors
    calls = []

    def full_disk(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # the second file of the next checkpoint hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, tensors, metadata)

    monkeypatch.setattr(atomic, "save_safetensors", full_disk)
    with pytest.raises(OSError, match="disk full.*earlier checkpoints are intact"):
        ckpt.save(root, 6, _groups(1), _meta(6))
    assert sorted(p.name for p in root.iterdir()) == [good.name]  # no half checkpoint, no temp folder
    info, _ = ckpt.latest(tmp_path)
    assert info.step == 5 and torch.equal(ckpt.load_tensors(good, "model")["w"], _groups(0)["model"]["w"])


def test_a_save_killed_midway_leaves_only_a_temp_folder_that_is_cleaned(tmp_path):
    root = tmp_path / "checkpoints"
    good = ckpt.save(root, 1, _groups(0), _meta(1))
    (root / ".tmp-step_00000002-999").mkdir()  # what a SIGKILL during a save leaves
    (root / ".tmp-step_00000002-999" / "model.safetensors").write_bytes(b"partial")
    assert [i.step for i in ckpt.list_checkpoints(tmp_path)] == [1]
    assert [p.name for p in ckpt.remove_stale(tmp_path)] == [".tmp-step_00000002-999"]
    assert [p.name for p in root.iterdir()] == [good.name]


def test_saving_a_step_again_replaces_it(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt.save(root, 3, _groups(0), _meta(3))
    path = ckpt.save(root, 3, _groups(1), _meta(3))
    assert torch.equal(ckpt.load_tensors(path, "model")["w"], _groups(1)["model"]["w"])
    assert [p.name for p in root.iterdir()] == [path.name]


def test_prune_keeps_milestones_final_and_newest(tmp_path):
    root = tmp_path / "checkpoints"
    g = {"model": {"w": torch.zeros(1)}}
    kinds = {
        1: _meta(1),
        2: _meta(2, milestone=0),
        3: _meta(3),
        4: _meta(4),
        5: _meta(5, milestone=1),
        6: _meta(6),
        7: _meta(7),
    }
    for step, meta in kinds.items():
        ckpt.save(root, step, g, meta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt.prune(tmp_path, keep_last=2)
    assert [i.step for i in ckpt.list_checkpoints(tmp_path)] == [2, 5, 6, 7]
    ckpt.prune(tmp_path, keep_last=0)
    assert [i.step for i in ckpt.list_checkpoints(tmp_path)] == [2, 5, 7]  # the newest always stays


def test_ema_decay_warmup_and_round_trip():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9, warmup=True)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(1000) == 0.9
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # decay 0.1: shadow = 0.1·old + 0.9·new
    assert torch.allclose(ema.params["weight"], 0.1 * start["weight"] + 0.9 * model.weight)
    twin = EMA(nn.Linear(3, 2), decay=0.9)
    twin.load_state_dict(ema.state_dict(), ema.updates)
    assert twin.updates == 1 and all(torch.equal(twin.state_dict()[k], v) for k, v in ema.state_dict().items())
    plain = EMA(model, decay=0.5, warmup=False)
    assert plain.decay_at(0) == 0.5
    copy = nn.Linear(3, 2)
    ema.copy_to(copy)
    assert torch.equal(copy.weight, ema.params["weight"])
    with pytest.raises(KeyError, match="missing"):
        twin.load_state_dict({"weight": torch.zeros(2, 3)}, 0)
