import io
import json
import tarfile

import numpy as np
import pytest

from synthscale.cli import main
from synthscale.config import ConfigError, DataConfig
from synthscale.data import get_dataset
from synthscale.data.shards import ShardDataset, write_shards
from tests.userdata_helpers import image_bytes, make_folder, truncated_jpeg

SPLITS = ("train", "val", "test")


def cfg_for(dataset, path, **kw):
    base = dict(
        dataset=dataset,
        path=str(path),
        resolution=16,
        size=1000,
        val_size=1000,
        test_size=1000,
        val_fraction=0.2,
        test_fraction=0.2,
    )
    return DataConfig(**{**base, **kw})


def items(ds):
    return [ds[i] for i in range(len(ds))]


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_shards_written_from_a_folder_read_back_the_same_items(tmp_path):
    make_folder(tmp_path / "src", n=25, extra={"photographer": "ann"})
    manifest = write_shards(tmp_path / "src", tmp_path / "shards", shard_size=7)
    assert manifest["items"] == 25 and [s["items"] for s in manifest["shards"]] == [7, 7, 7, 4]
    assert {s["where"] for s in manifest["skipped"]} == {"bad.png", "trunc.png"}  # the corrupt PNGs stay out
    for split in SPLITS:
        folder = get_dataset(cfg_for("folder", tmp_path / "src"), split)
        shards = get_dataset(cfg_for("shards", tmp_path / "shards"), split)
        assert isinstance(shards, ShardDataset) and len(shards) == len(folder) > 0
        for a, b in zip(items(folder), items(shards)):  # same split, same order, same pixels and metadata
            assert np.array_equal(a["image"], b["image"]) and a["caption"] == b["caption"]
            assert a["attributes"] == b["attributes"] and b["attributes"]["photographer"] == "ann"


def test_shard_layout_is_webdataset_style_and_deterministic(tmp_path):
    make_folder(tmp_path / "src", n=6, corrupt=False)
    write_shards(tmp_path / "src", tmp_path / "a", shard_size=100)
    write_shards(tmp_path / "src", tmp_path / "b", shard_size=100)
    first = (tmp_path / "a" / "shard-000000.tar").read_bytes()
    assert first == (tmp_path / "b" / "shard-000000.tar").read_bytes()  # same input, same bytes
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert names[:3] == ["img000.jpg", "img000.txt", "img000.json"]  # a key's members are adjacent
        assert tar.extractfile("img001.txt").read().decode() == "photo number 1 of a thing"
        assert tar.extractfile("img001.png").read() == (tmp_path / "src" / "img001.png").read_bytes()  # copied as-is


def test_webdataset_reads_our_shards(tmp_path):
    wds = pytest.importorskip("webdataset")
    make_folder(tmp_path / "src", n=5, corrupt=False)
    write_shards(tmp_path / "src", tmp_path / "out", shard_size=2)
    urls = [str(p) for p in sorted((tmp_path / "out").glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 5 and samples[1]["txt"].decode() == "photo number 1 of a thing"


def test_foreign_shards_missing_caption_bad_member_and_corrupt_image(tmp_path):
    shard = tmp_path / "foreign"
    shard.mkdir()
    members = []
    for i in range(10):
        members += [(f"s/k{i}.png", image_bytes(i)), (f"s/k{i}.txt", f"thing {i}".encode())]
    members += [("s/nocap.png", image_bytes(50))]  # no caption
    members += [("s/noimg.txt", b"caption without image")]
    members += [("s/badjson.png", image_bytes(51)), ("s/badjson.txt", b"x"), ("s/badjson.json", b"{nope")]
    members += [("s/meta.png", image_bytes(52)), ("s/meta.txt", b"with metadata"), ("s/meta.json", b'{"w": 3}')]
    members += [("s/broken.jpg", truncated_jpeg(3)), ("s/broken.txt", b"a broken one")]
    write_tar(shard / "part-a.tar", members)
    cfg = cfg_for("shards", shard, val_fraction=0.0, test_fraction=0.0)
    ds = get_dataset(cfg, "train")  # no manifest: every *.tar is read
    reasons = {s["key"]: s["reason"] for s in ds.skipped}
    assert set(reasons) == {"s/nocap", "s/noimg", "s/badjson"}
    assert "missing caption" in reasons["s/nocap"] and "no image member" in reasons["s/noimg"]
    assert len(ds) == 12  # k0..k9, meta, broken
    got = {it["attributes"]["key"]: it for it in items(ds)}  # `broken` fails to decode → replaced, listed
    assert "s/broken" not in got and "s/broken" in {s["key"] for s in ds.skipped}
    assert got["s/meta"]["attributes"] == {"key": "s/meta", "w": 3} and got["s/k3"]["caption"] == "thing 3"
    assert all(it["image"].shape == (16, 16, 3) for it in got.values())
    empty = get_dataset(cfg_for("shards", shard, val_fraction=0.0, test_fraction=0.0, missing_caption="empty"), "train")
    assert any(empty[i]["attributes"]["key"] == "s/nocap" and empty[i]["caption"] == "" for i in range(len(empty)))


@pytest.mark.parametrize("cut", ["mid-member", "at-header"])
def test_truncated_shard_keeps_what_came_before_and_says_so_in_every_split(tmp_path, cut):
    make_folder(tmp_path / "src", n=20, corrupt=False)
    write_shards(tmp_path / "src", tmp_path / "out", shard_size=100)
    tar = tmp_path / "out" / "shard-000000.tar"
    data = tar.read_bytes()
    with tarfile.open(tar) as t:
        header_of_10th_key = t.getmember("img010.jpg").offset
    tar.write_bytes(data[: len(data) // 2] if cut == "mid-member" else data[:header_of_10th_key])
    for split in SPLITS:
        ds = get_dataset(cfg_for("shards", tmp_path / "out"), split)
        assert all(it["image"].shape == (16, 16, 3) for it in items(ds))  # never crashes
        assert any(s["key"] is None and "truncated or damaged" in s["reason"] for s in ds.skipped)
    total = sum(len(get_dataset(cfg_for("shards", tmp_path / "out"), s)) for s in SPLITS)
    assert 0 < total < 20 and (cut == "mid-member" or total == 10)


def test_writer_refuses_to_clobber_and_overwrite_replaces_stale_shards(tmp_path):
    make_folder(tmp_path / "src", n=9, corrupt=False)
    write_shards(tmp_path / "src", tmp_path / "out", shard_size=2)
    assert len(list((tmp_path / "out").glob("*.tar"))) == 5
    with pytest.raises(ConfigError, match="--overwrite"):
        write_shards(tmp_path / "src", tmp_path / "out", shard_size=5)
    write_shards(tmp_path / "src", tmp_path / "out", shard_size=5, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    with pytest.raises(ConfigError, match="inside the source folder"):
        write_shards(tmp_path / "src", tmp_path / "src" / "shards")
    manifest = tmp_path / "out" / "manifest.json"
    manifest.write_text(json.dumps({"format": "synthscale-shards", "complete": False, "shards": []}))
    with pytest.raises(ConfigError, match="did not finish"):
        get_dataset(cfg_for("shards", tmp_path / "out"), "train")


def test_bad_shard_paths_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        get_dataset(cfg_for("shards", tmp_path / "nope"), "train")
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ConfigError, match="compressed tars are not read"):
        get_dataset(cfg_for("shards", tmp_path), "train")
    (tmp_path / "junk.tar").write_bytes(b"definitely not a tar" * 40)
    with pytest.raises(ConfigError, match="not a readable uncompressed tar"):
        get_dataset(cfg_for("shards", tmp_path), "train")


def test_cli_data_shard(tmp_path, capsys):
    make_folder(tmp_path / "src", n=7)
    rc = main(["data", "shard", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--shard-size", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and "wrote 7 items in 3 shards" in out and "skipped 2" in out and "bad.png" in out
    rc = main(["data", "shard", str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def test_reads_are_safe_across_threads_and_pickling(tmp_path):
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    make_folder(tmp_path / "src", n=16, corrupt=False)
    write_shards(tmp_path / "src", tmp_path / "out", shard_size=5)
    ds = get_dataset(cfg_for("shards", tmp_path / "out", val_fraction=0.0, test_fraction=0.0), "train")
    expected = [ds[i]["image"] for i in range(len(ds))]
    with ThreadPoolExecutor(4) as pool:  # interleaved reads of the same shard files
        got = list(pool.map(lambda i: ds[i % len(ds)]["image"], range(4 * len(ds))))
    assert all(np.array_equal(g, expected[i % len(ds)]) for i, g in enumerate(got))
    clone = pickle.loads(pickle.dumps(ds))  # as a spawned DataLoader worker receives it
    assert all(np.array_equal(clone[i]["image"], expected[i]) for i in range(len(ds)))
