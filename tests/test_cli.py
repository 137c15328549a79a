import socket
import subprocess
import sys

import pytest
import pytest_socket
from PIL import Image

from synthscale.cli import main


def test_data_preview_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["data", "preview", "--dataset", "shapes", "--n", "16", "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.width > 4 * 128 and img.height > 4 * 128


def test_data_stats_prints_every_split(capsys):
    assert main(["data", "stats", "--limit", "50"]) == 0
    out = capsys.readouterr().out
    for split in ("train", "val", "test", "holdout"):
        assert f"== {split}" in out


def test_bad_override_is_a_clear_error(capsys):
    assert main(["data", "stats", "--set", "resolutoin=64"]) == 2
    assert "resolutoin" in capsys.readouterr().err


def test_module_entry_point_and_help():
    out = subprocess.run([sys.executable, "-m", "synthscale", "--help"], capture_output=True, text=True, check=True)
    assert "data" in out.stdout


def test_network_is_blocked_in_tests():
    with pytest.raises(pytest_socket.SocketConnectBlockedError):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
