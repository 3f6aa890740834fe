"""The ``silencio`` command: every command has help text, and the data/eval commands run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from silencio.cli import build_parser, configure_logging, iter_commands, main


def test_every_command_has_help_text():
    commands = list(iter_commands(build_parser()))
    assert len(commands) >= 8
    for path, parser, help_text in commands:
        assert help_text and len(help_text) > 10, f"silencio {' '.join(path)} has no help text"
        for action in parser._actions:
            if action.dest not in ("help",) and action.option_strings or action.dest in ("dir", "file"):
                assert action.help, f"silencio {' '.join(path)}: {action.dest} has no help text"


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "silencio.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "data" in out.stdout


def test_errors_are_one_line_with_exit_2(tmp_path, capsys):
    rc = main(["data", "validate", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "nope" in err and "Traceback" not in err


def test_data_commands_end_to_end(tmp_path, capsys, mini):
    ds = tmp_path / "ds"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(ds),
                "--species",
                "5",
                "--clips",
                "2",
                "--soundscapes",
                "1",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert "SYNTHETIC" in capsys.readouterr().out
    assert main(["data", "validate", str(ds), "--out", str(tmp_path / "val")]) == 0
    assert (tmp_path / "val" / "validation.md").exists()
    assert main(["data", "prepare", str(ds), "--out", str(tmp_path / "cache"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "windows from 11 files" in out
    assert main(["data", "split", str(mini), "--out", str(tmp_path / "split.csv")]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["features", "info"]) == 0
    assert '"fingerprint"' in capsys.readouterr().out


def test_eval_command(tmp_path, capsys):
    from training.synth import SynthConfig, generate

    ds = tmp_path / "ds"
    generate(ds, SynthConfig(species=4, clips_per_species=1, soundscapes=2, seed=2))
    truth = ds / "soundscape_solution.csv"
    rc = main(
        [
            "eval",
            "--predictions",
            str(truth),
            "--truth",
            str(truth),
            "--out",
            str(tmp_path / "r"),
            "--data-name",
            "synthetic truth vs itself",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "macro ROC-AUC 1.0000" in out and "synthetic truth vs itself" in out


def test_third_party_info_only_with_verbose(monkeypatch):
    import logging

    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    monkeypatch.setenv("SILENCIO_VERBOSE", "0")
    root = logging.getLogger()
    saved = root.level
    try:
        configure_logging(0)
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)  # "HTTP Request: …" lines
        assert not logging.getLogger("bentoml").isEnabledFor(logging.INFO)
        assert logging.getLogger("edge.sync").isEnabledFor(logging.INFO)  # ours
        assert os.environ["SILENCIO_VERBOSE"] == "0" and os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
        configure_logging(1)
        assert logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert not logging.getLogger("httpx").isEnabledFor(logging.DEBUG)
        configure_logging(2)
        assert logging.getLogger("cloud").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved)
        for name in ("shared_features", "training", "cloud", "bentos", "edge", "silencio"):
            logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.mark.parametrize("argv", [["features", "compute"], ["data"], ["eval"]])
def test_usage_errors(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
