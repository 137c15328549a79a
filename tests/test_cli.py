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


def _misuse(argv, capsys) -> str:
    """Run a misused command: exit status 2, no traceback, the error on stderr (one line; argparse adds usage)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_misuse_is_a_one_line_error(tmp_path, capsys, tiny_study):
    nothing, empty = tmp_path / "nope", tmp_path / "empty"
    empty.mkdir()
    assert "does not exist" in _misuse(["evaluate", str(nothing)], capsys)
    assert "is not a run folder" in _misuse(["evaluate", str(empty)], capsys)
    assert "is not an autoencoder folder" in _misuse(["autoencoder", "eval", str(empty)], capsys)
    assert "is not an autoencoder folder" in _misuse(["autoencoder", "cache", str(empty), "--root", "x"], capsys)
    assert "neither a run folder" in _misuse(["sample", str(empty), "--prompt", "a red circle"], capsys)
    for command in (["results"], ["report"], ["serve"]):
        assert "results.sqlite" in _misuse([*command, str(empty)], capsys)
    # a run folder whose checkpoints are gone
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text((tiny_study / "train" / "masked" / "config.json").read_text())
    assert "no milestone checkpoints" in _misuse(["evaluate", str(run)], capsys)
    assert "no intact checkpoints" in _misuse(["sample", str(run), "--prompt", "a red circle"], capsys)
    assert "invalid choice: 'bogus'" in _misuse(["data", "preview", "--split", "bogus"], capsys)
    assert "invalid choice: 'bogus'" in _misuse(["autoencoder", "eval", str(empty), "--split", "bogus"], capsys)
    assert "--weights: 'bogus'" in _misuse(
        ["evaluate", str(tiny_study / "train" / "masked"), "--weights", "bogus"], capsys
    )
    assert "no CUDA GPU" in _misuse(["evaluate", str(tiny_study / "train" / "masked"), "--device", "cuda"], capsys)


def test_cli_choices_come_from_the_registries(monkeypatch, capsys):
    """A registered objective is a `synthscale flops --objective` choice without touching the CLI."""
    import synthscale.objectives as objectives
    from synthscale.objectives.masked import MaskedObjective

    class Echo(MaskedObjective):
        name = "echo"

    monkeypatch.setitem(objectives.OBJECTIVES, "echo", Echo)
    monkeypatch.setattr(Echo, "config", type("EchoConfig", (MaskedObjective.config,), {}))
    assert main(["flops", "--objective", "echo", "--size", "2x64", "--tokens", "16", "--json"]) == 0
    assert '"objective": "echo"' in capsys.readouterr().out
    assert main(["study", "x.yaml", "--out", "y", "--executor", "bogus"]) == 2
    assert "choose from 'sequential', 'processes', 'slurm', 'ray'" in capsys.readouterr().err
