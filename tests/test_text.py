import pytest

from synthscale.config import DataConfig
from synthscale.data.shapes import ShapesDataset
from synthscale.data.text import CaptionTooLong, WordTokenizer


def test_every_caption_word_is_known_and_round_trips():
    tok = WordTokenizer.for_shapes(24)
    ds = ShapesDataset(DataConfig(counting=True), "train")
    for i in range(500):
        caption = ds[i]["caption"]
        ids = tok.encode([caption])[0]
        assert tok.unk_id not in ids.tolist()
        assert tok.decode(ids.tolist()) == caption.replace(",", "")


def test_padding_specials_and_too_long():
    tok = WordTokenizer.for_shapes(6)
    ids = tok.encode(["a red circle", "a blue square on the left"])
    assert ids.shape == (2, 6) and ids[0, 3:].eq(tok.pad_id).all()
    assert (tok.pad_id, tok.unk_id, tok.null_id) == (0, 1, 2)
    assert tok.encode(["a zebra"])[0, 1] == tok.unk_id
    with pytest.raises(CaptionTooLong, match="max_caption_tokens"):
        tok.encode(["a small red circle to the left of a large blue square"])
