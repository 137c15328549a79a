"""`load_generator(...).generate`, `synthscale sample` on a run and on a study folder (tiny real runs)."""

import hashlib

import numpy as np
import pytest
from PIL import Image

from synthscale.cli import main
from synthscale.train import load_generator, milestone_checkpoints, pick_milestone

PROMPT = "a small red circle above a large blue square"


def _run(study, name="masked"):
    return study / "train" / name


def test_generate_is_seeded_uint8_at_the_dataset_resolution(tiny_study):
    g = load_generator(_run(tiny_study, "flow-a"), milestone="last")
    a = g.generate([PROMPT, "a green triangle"], n=2, steps=4, cfg=3, seed=0)
    assert a.dtype == np.uint8 and a.shape == (4, 16, 16, 3)
    assert np.array_equal(a, g.generate([PROMPT, "a green triangle"], n=2, steps=4, cfg=3, seed=0))
    assert not np.array_equal(a, g.generate([PROMPT, "a green triangle"], n=2, steps=4, cfg=3, seed=1))
    assert not np.array_equal(a[0], a[1])  # one seed, different noise per image
    pil = g.generate([PROMPT], n=1, steps=4, seed=0, pil=True)
    assert isinstance(pil[0], Image.Image) and pil[0].size == (16, 16)
    assert np.array_equal(np.asarray(pil[0]), g.generate([PROMPT], n=1, steps=4, seed=0)[0])


@pytest.mark.parametrize("name", ["masked", "autoregressive"])
def test_token_paradigms_generate_and_batch(tiny_study, name):
    g = load_generator(_run(tiny_study, name))
    steps = g.default_steps()
    whole = g.generate([PROMPT], n=3, steps=steps, seed=5)
    assert whole.shape == (3, 16, 16, 3)
    assert np.array_equal(whole, g.generate([PROMPT], n=3, steps=steps, seed=5, batch_size=3))


def test_generate_refuses_bad_settings_and_prompts(tiny_study):
    g = load_generator(_run(tiny_study, "masked"))
    with pytest.raises(ValueError, match=r"steps must be an integer in 1\.\.16"):
        g.generate([PROMPT], steps=100)
    with pytest.raises(ValueError, match=r"CFG scale must be a number in 0\.\.20"):
        g.generate([PROMPT], steps=4, cfg=50)
    with pytest.raises(ValueError, match="empty"):
        g.generate(["  ...  "], steps=4)
    with pytest.raises(TypeError, match="list of prompts"):
        g.generate(PROMPT, steps=4)
    ar = load_generator(_run(tiny_study, "autoregressive"))
    with pytest.raises(ValueError, match=r"16\.\.16"):
        ar.generate([PROMPT], steps=4)


def test_prompt_check_names_unknown_and_truncated_words(tiny_study):
    g = load_generator(_run(tiny_study, "flow-a"))
    ok = g.check_prompt(PROMPT)
    assert ok.notes() == [] and ok.used == PROMPT
    odd = g.check_prompt("a red zorp circle above a blorb")
    assert odd.unknown == ["zorp", "blorb"] and "'zorp', 'blorb'" in odd.notes()[0]
    long = g.check_prompt(" ".join(["red circle"] * 10))  # 20 words; the runs read 16
    assert long.truncated and long.used == " ".join(["red circle"] * 8)
    assert "20 tokens but the model reads 16" in long.notes()[0]
    # a truncated prompt samples exactly like its kept words
    assert np.array_equal(g.generate([long.prompt], steps=4), g.generate([long.used], steps=4))
    assert g.check_prompt("").empty


def test_pick_milestone_by_index_flops_or_last(tiny_study):
    run = _run(tiny_study)
    infos = milestone_checkpoints(run)
    assert pick_milestone(run, "last") == infos[-1] == pick_milestone(run, -1) == pick_milestone(run, "1")
    assert pick_milestone(run, 0) == infos[0] == pick_milestone(run, "3e9") == pick_milestone(run, 1e3)
    assert pick_milestone(run, "1e12") == infos[-1]
    with pytest.raises(ValueError, match="has 2 milestones"):
        pick_milestone(run, 5)
    with pytest.raises(ValueError, match="'last', an index or training FLOPs"):
        pick_milestone(run, "best")
    early = load_generator(run, milestone=0)
    assert early.checkpoint == infos[0]


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


def test_cli_sample_run_writes_pngs_and_is_seeded(tiny_study, tmp_path, capsys):
    run = _run(tiny_study, "flow-a")
    args = ["sample", str(run), "--prompt", PROMPT, "--prompt", "a blue zorp", "--n", "2", "--steps", "4", "--upscale"]
    assert main([*args, "2", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "FLOPs/image" in out and "unknown word 'zorp'" in out
    files = sorted((tmp_path / "a" / "flow").glob("*.png"))
    assert len(files) == 4 and Image.open(files[0]).size == (32, 32)  # 16 px × upscale 2
    assert (tmp_path / "a" / "grid.png").is_file()
    assert main([*args, "2", "--out", str(tmp_path / "b")]) == 0
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert main([*args, "2", "--out", str(tmp_path / "c"), "--seed", "1"]) == 0
    a, c = _digests(tmp_path / "a"), _digests(tmp_path / "c")
    assert all(a[k] != c[k] for k in a if k.startswith("flow/"))


def test_cli_sample_study_picks_each_paradigms_best_at_the_compute(tiny_study, tmp_path, capsys):
    levels = [i.train_flops for i in milestone_checkpoints(_run(tiny_study, "flow-a"))]
    base = ["sample", str(tiny_study), "--prompt", PROMPT, "--n", "1", "--steps", "4"]
    assert main([*base, "--compute", f"{levels[0]:.3g}", "--out", str(tmp_path / "low")]) == 0
    low = capsys.readouterr().out
    assert "run flow-b, milestone step_" in low  # flow-b has the better fd-probe at the low level
    assert main([*base, "--compute", "1e15", "--out", str(tmp_path / "high")]) == 0
    high = capsys.readouterr().out
    assert "run flow-a" in high and "run masked" in high and "run autoregressive" in high
    assert "16 steps" in high  # next-token: one step per token, whatever --steps says for the others
    folders = {p.name for p in (tmp_path / "high").iterdir() if p.is_dir()}
    assert folders == {"flow-2x64", "masked-2x64", "autoregressive-2x64"}
    width, height = Image.open(tmp_path / "high" / "grid.png").size
    assert width > 1.5 * height  # one prompt, one image each: the three paradigms side by side in one row


@pytest.mark.parametrize(
    "extra,message",
    [
        ([], "no prompt"),
        (["--prompt", " "], "empty prompt"),
        (["--prompt", "a", "--steps", "100"], "steps must be an integer in 1..16"),
        (["--prompt", "a", "--milestone", "7"], "has 2 milestones"),
        (["--prompt", "a", "--compute", "1e9"], "--compute picks among a study"),
        (["--prompt", "a", "--cfg", "99"], "CFG scale"),
        (["--prompt", "a", "--device", "nonsense"], "--device 'nonsense'"),
    ],
)
def test_cli_sample_bad_input_is_one_clear_line(tiny_study, tmp_path, capsys, extra, message):
    assert main(["sample", str(_run(tiny_study)), "--out", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err


def test_cli_sample_needs_a_run_or_study_folder(tmp_path, capsys):
    assert main(["sample", str(tmp_path), "--prompt", "a red circle"]) == 2
    assert "neither a run folder" in capsys.readouterr().err


def test_pick_ranks_by_the_studys_deciding_instrument(tiny_study, tmp_path):
    """A study scored by another instrument (here an in-domain encoder's fd_encoder, ranking the flow runs the other
    way round from the probe's made-up fd_probe) is picked on that instrument's metric, not on fd_probe."""
    from synthscale.study.pick import best_models
    from synthscale.study.results import ResultsStore, store_path

    card = {"name": "encoder", "kind": "encoder", "label": "in-domain encoder", "precedence": 2}
    card |= {"quality": "fd_encoder", "following": "r_precision"}
    (tmp_path / "train").symlink_to(tiny_study / "train")
    with ResultsStore.of(tiny_study, create=False) as old:
        runs, records = old.runs(), old.records()
    with ResultsStore(store_path(tmp_path), create=True) as store:
        for r in runs:
            store.add_run(r["run"], r["objective"], r["size"], r["data_size"], r["autoencoder"], status="done")
        for r in records:
            r.pop("config_hash", None)
            r["metrics"] = {**r["metrics"], "fd_encoder": 1.0 / r["metrics"]["fd_probe"]}  # the reverse order
            r["instruments"] = {"scored_by": {"encoder": card}}
        store.add_records(records)
    by_probe, by_encoder = best_models(tiny_study, 1e15)["flow"], best_models(tmp_path, 1e15)["flow"]
    assert (by_probe.run, by_probe.metric) == ("flow-a", "fd_probe")
    assert (by_encoder.run, by_encoder.metric) == ("flow-b", "fd_encoder")
