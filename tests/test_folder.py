import json

import numpy as np
import pytest
from PIL import Image

from synthscale.cli import main
from synthscale.config import ConfigError, DataConfig
from synthscale.data import get_dataset
from synthscale.data.folder import FolderDataset
from synthscale.data.text import CaptionTooLong, WordTokenizer, tokenizer_for
from synthscale.data.userdata import split_of
from tests.userdata_helpers import image_bytes, make_folder, truncated_jpeg


def cfg_for(path, **kw):
    base = dict(
        dataset="folder",
        path=str(path),
        resolution=16,
        size=1000,
        val_size=1000,
        test_size=1000,
        val_fraction=0.2,
        test_fraction=0.2,
    )
    return DataConfig(**{**base, **kw})


def all_items(cfg):
    return {s: get_dataset(cfg, s) for s in ("train", "val", "test")}


def test_folder_loads_captioned_images_like_shapes_items(tmp_path):
    make_folder(tmp_path, n=30)
    ds = get_dataset(cfg_for(tmp_path), "train")
    assert isinstance(ds, FolderDataset) and len(ds) > 0
    item = ds[0]
    assert set(item) == {"image", "caption", "attributes"}
    assert item["image"].dtype == np.uint8 and item["image"].shape == (16, 16, 3)
    i = item["attributes"]["index"]
    assert item["caption"] == f"photo number {i} of a thing"
    assert item["attributes"]["key"] == f"img{i:03d}"
    # the image is the source resized (20×16 → short side 16, centre crop 16×16), not something else
    src = Image.open(tmp_path / f"img{i:03d}.{'png' if i % 2 else 'jpg'}").convert("RGB")
    expected = np.asarray(src.resize((20, 16), Image.Resampling.BICUBIC).crop((2, 0, 18, 16)))
    assert np.abs(item["image"].astype(int) - expected.astype(int)).max() <= 1


def test_corrupt_and_truncated_png_are_skipped_counted_and_listed(tmp_path):
    make_folder(tmp_path, n=30)
    splits = all_items(cfg_for(tmp_path))
    assert sum(len(ds) for ds in splits.values()) == 30  # every good image, none of the bad ones
    skipped = [s for ds in splits.values() for s in ds.skipped]
    reasons = {s["where"]: s["reason"] for s in skipped}
    assert set(reasons) == {"bad.png", "trunc.png"}
    assert all("unreadable image" in r for r in reasons.values())
    for ds in splits.values():
        keys = {ds[i]["attributes"]["key"] for i in range(len(ds))}
        assert not keys & {"bad", "trunc"}
        report = json.loads(ds.write_report(tmp_path / f"report_{ds.split}.json").read_text())
        assert report["skipped_count"] == len(ds.skipped) and report["items"] == len(ds)


def test_image_failing_only_at_decode_is_replaced_by_the_next_item_and_counted(tmp_path):
    make_folder(tmp_path, n=12, corrupt=False)
    cfg = cfg_for(tmp_path, val_fraction=0.0, test_fraction=0.0)
    order = [get_dataset(cfg, "train")[i]["attributes"]["key"] for i in range(12)]
    victim = order[4]
    (tmp_path / f"{victim}.jpg").unlink(missing_ok=True)
    (tmp_path / f"{victim}.png").unlink(missing_ok=True)
    rows = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    for r in rows:
        if r["file"].startswith(victim):
            r["file"] = f"{victim}.jpg"
    (tmp_path / f"{victim}.jpg").write_bytes(truncated_jpeg(5))  # header fine, pixels missing
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = get_dataset(cfg, "train")
    assert len(ds) == 12 and ds.skipped == []  # passes the index-time check
    got = [ds[i]["attributes"]["key"] for i in range(12)]
    assert got[4] == order[5] and got[:4] == order[:4] and got[5:] == order[5:]
    assert [s["key"] for s in ds.skipped] == [victim] and "unreadable" in ds.skipped[0]["reason"]
    assert ds[4]["attributes"]["key"] == order[5] and len(ds.skipped) == 1  # counted once, same answer again


def test_splits_are_deterministic_disjoint_stable_and_nested(tmp_path):
    make_folder(tmp_path, n=60, corrupt=False)
    cfg = cfg_for(tmp_path)

    def keys(c, split):
        ds = get_dataset(c, split)
        return [ds[i]["attributes"]["key"] for i in range(len(ds))]

    first = {s: keys(cfg, s) for s in ("train", "val", "test")}
    assert first == {s: keys(cfg, s) for s in ("train", "val", "test")}  # same config, same items, same order
    sets = {s: set(k) for s, k in first.items()}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    assert len(sets["train"] | sets["val"] | sets["test"]) == 60
    assert all(split_of(cfg, k) == s for s, ks in first.items() for k in ks)
    assert len(get_dataset(cfg, "holdout")) == 0
    # a different seed draws a different split
    assert set(keys(cfg_for(tmp_path, seed=1), "val")) != sets["val"]
    # adding files never moves an old item to another split
    (tmp_path / "new.png").write_bytes(image_bytes(1234))
    with open(tmp_path / "captions.jsonl", "a") as f:
        f.write(json.dumps({"file": "new.png", "caption": "a new one"}) + "\n")
    after = {s: set(keys(cfg, s)) - {"new"} for s in ("train", "val", "test")}
    assert after == sets
    # size caps: a smaller data size is a prefix of a larger one
    small, large = keys(cfg_for(tmp_path, size=5), "train"), keys(cfg_for(tmp_path, size=12), "train")
    assert len(small) == 5 and large[:5] == small
    assert len(keys(cfg_for(tmp_path, val_size=3), "val")) == 3


def test_missing_caption_rule(tmp_path):
    make_folder(tmp_path, n=10, corrupt=False)
    (tmp_path / "uncaptioned.png").write_bytes(image_bytes(77))  # in the folder, not in captions.jsonl
    with open(tmp_path / "captions.jsonl", "a") as f:
        f.write(json.dumps({"file": "blank.png", "caption": "   "}) + "\n")
    (tmp_path / "blank.png").write_bytes(image_bytes(78))
    splits = all_items(cfg_for(tmp_path))
    skipped = {s["key"]: s["reason"] for ds in splits.values() for s in ds.skipped}
    assert set(skipped) == {"uncaptioned", "blank"} and all("missing caption" in r for r in skipped.values())
    assert sum(map(len, splits.values())) == 10
    kept = all_items(cfg_for(tmp_path, missing_caption="empty"))
    captions = {ds[i]["attributes"]["key"]: ds[i]["caption"] for ds in kept.values() for i in range(len(ds))}
    assert len(captions) == 12 and captions["uncaptioned"] == "" and captions["blank"] == ""


def test_long_caption_rule_truncates_with_count_or_skips(tmp_path):
    make_folder(tmp_path, n=10, corrupt=False)  # captions are 6 words
    cfg = cfg_for(tmp_path, max_caption_tokens=4, val_fraction=0.0, test_fraction=0.0)
    ds = get_dataset(cfg, "train")
    assert len(ds) == 10 and len(ds.truncated) == 10 and ds.report()["truncated_count"] == 10
    assert ds[0]["caption"].count(" ") == 5  # the item keeps its full caption; the tokenizer cuts it
    tok = tokenizer_for(cfg)
    ids = tok.encode([ds[0]["caption"]])
    assert ids.shape == (1, 4) and tok.pad_id not in ids[0].tolist() and tok.truncations == 1
    assert tok.decode(ids[0].tolist()) == " ".join(ds[0]["caption"].split()[:4])
    skip = get_dataset(
        cfg_for(tmp_path, max_caption_tokens=4, long_caption="skip", val_fraction=0.0, test_fraction=0.0), "train"
    )
    assert (
        len(skip) == 0
        and len(skip.skipped) == 10
        and "6 tokens > data.max_caption_tokens=4" in skip.skipped[0]["reason"]
    )
    with pytest.raises(CaptionTooLong):
        WordTokenizer(["a"], 2).encode(["a a a"])  # the shapes default still refuses


def test_csv_and_sidecar_captions(tmp_path):
    a, b = tmp_path / "csv", tmp_path / "sidecar"
    for folder in (a, b):
        (folder / "sub").mkdir(parents=True)
        (folder / "x.png").write_bytes(image_bytes(1))
        (folder / "sub" / "y.v2.png").write_bytes(image_bytes(2))
    (b / "x.txt").write_text("a cat, sleeping\n")
    (b / "sub" / "y.v2.txt").write_text("a dog")
    (a / "captions.csv").write_text(
        '\ufefffile,caption,source,key\nx.png,"a cat, sleeping",web,K1\nsub/y.v2.png,a dog,cam,K2\n'
    )
    for folder, extra in ((a, {"source": "web"}), (b, {})):
        splits = all_items(cfg_for(folder, val_fraction=0.0, test_fraction=0.0))
        items = {it["attributes"]["key"]: it for it in (splits["train"][i] for i in range(len(splits["train"])))}
        assert set(items) == {"x", "sub/y_v2"}  # the key has no dot (webdataset would split it there)
        assert items["x"]["caption"] == "a cat, sleeping" and items["sub/y_v2"]["caption"] == "a dog"
        assert {k: v for k, v in items["x"]["attributes"].items() if k != "key"} == extra


def test_crop_filter_and_alpha_policy(tmp_path):
    # 64×32: red left quarter, green middle half, blue right quarter
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :16] = (255, 0, 0)
    pixels[:, 16:48] = (0, 255, 0)
    pixels[:, 48:] = (0, 0, 255)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    (tmp_path / "captions.jsonl").write_text(
        '{"file": "wide.png", "caption": "w"}\n{"file": "clear.png", "caption": "c"}\n'
    )
    kw = dict(val_fraction=0.0, test_fraction=0.0, resize_filter="nearest", background="white")

    def get(**extra):
        ds = get_dataset(cfg_for(tmp_path, **kw, **extra), "train")
        return {ds[i]["attributes"]["key"]: ds[i]["image"] for i in range(len(ds))}

    centre, squash = get(crop="center"), get(crop="none")
    assert (centre["wide"] == (0, 255, 0)).all()  # the centre square is all green
    assert (squash["wide"][:, :4] == (255, 0, 0)).all() and (squash["wide"][:, -4:] == (0, 0, 255)).all()
    assert (centre["clear"] == 255).all()  # transparency takes the background colour


def test_word_tokenizer_built_from_train_captions_round_trips(tmp_path):
    make_folder(tmp_path, n=20, corrupt=False)
    (tmp_path / "café.png").write_bytes(image_bytes(5))
    with open(tmp_path / "captions.jsonl", "a") as f:
        f.write(json.dumps({"file": "café.png", "caption": "Un café über alles"}) + "\n")
    cfg = cfg_for(tmp_path, val_fraction=0.0, test_fraction=0.0, caption_vocab=12)
    tok = tokenizer_for(cfg)
    assert tok.vocab_size == 12 and tok.itos[:3] == ["<pad>", "<unk>", "<null>"]
    assert tok.encode(["photo of a thing"])[0, :4].tolist() == [tok.stoi[w] for w in ("photo", "of", "a", "thing")]
    assert WordTokenizer.words("Un café über alles") == ["un", "café", "über", "alles"]
    tok.save(tmp_path / "vocab.json")
    again = WordTokenizer.load(tmp_path / "vocab.json")
    assert again.itos == tok.itos and again.max_length == tok.max_length and again.truncate


def test_bad_folder_configs_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="data.path is not set"):
        get_dataset(DataConfig(dataset="folder"), "train")
    with pytest.raises(ConfigError, match="is not a folder"):
        get_dataset(cfg_for(tmp_path / "nowhere"), "train")
    (tmp_path / "captions.jsonl").write_text('{"file": "a.png", "caption": "x"}\n{"file": "b.png", "caption": oops}\n')
    with pytest.raises(ConfigError, match=r"captions.jsonl:2: not valid JSON"):
        get_dataset(cfg_for(tmp_path), "train")
    (tmp_path / "captions.csv").write_text("file,caption\n")
    with pytest.raises(ConfigError, match="both captions.jsonl and captions.csv"):
        get_dataset(cfg_for(tmp_path), "train")
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "captions.csv").write_text("path,text\na.png,x\n")
    with pytest.raises(ConfigError, match="header naming the columns 'file' and 'caption'"):
        get_dataset(cfg_for(tmp_path), "train")
    with pytest.raises(ConfigError, match="leaves nothing for train"):
        get_dataset(cfg_for(tmp_path, val_fraction=0.5, test_fraction=0.5), "train")


def test_cli_preview_reads_a_folder(tmp_path, capsys):
    make_folder(tmp_path / "data", n=8)
    out = tmp_path / "grid.png"
    rc = main(
        [
            "data",
            "preview",
            "--dataset",
            "folder",
            "--set",
            f"path={tmp_path / 'data'}",
            "--set",
            "val_fraction=0",
            "--set",
            "test_fraction=0",
            "--n",
            "4",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and out.is_file() and "wrote 4 train items" in capsys.readouterr().out


def test_cli_stats_summarises_user_data(tmp_path, capsys):
    make_folder(tmp_path / "data", n=8)  # + bad.png and trunc.png
    rc = main(["data", "stats", "--dataset", "folder", "--set", f"path={tmp_path / 'data'}", "--json"])
    stats = json.loads(capsys.readouterr().out)
    assert rc == 0 and set(stats) == {"train", "val", "test"}
    assert sum(s["items"] for s in stats.values()) == 8
    assert sum(n for s in stats.values() for n in s["skipped"].values()) == 2
