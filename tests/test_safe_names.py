"""Values that form paths (run names, sweep names, run.output_dir) are refused in config validation, in one
line and before Ray starts, unless they resolve to a plain child of their base directory (issue 18, item 4).
"""

from __future__ import annotations

import pathlib

import pytest

from rllib_rec.cli import main

ROOT = pathlib.Path(__file__).parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")
SWEEP = str(ROOT / "configs" / "sweep.yaml")
BAD_NAMES = ["../../etc/evil", "", "a/b", "..", ".hidden", "-rf", "a b", "x" * 101, "/abs"]


def _one_line_error(capsys, rc: int, key: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and f"{key}: " in err, err
    return err


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_run_name_is_a_config_error_everywhere(name: str, tmp_path, capsys) -> None:
    out = tmp_path / "runs"
    err = _one_line_error(capsys, main(["show-config", "--config", DEBUG, "--set", f"name={name}"]), "name")
    assert "A-Z a-z 0-9" in err
    _one_line_error(capsys, main(["train", "--config", DEBUG, "--set", f"name={name}",
                                  "--set", f"run.output_dir={out}"]), "name")
    _one_line_error(capsys, main(["tune", "--config", SWEEP, "--set", f"name={name}",
                                  "--set", f"sweep.storage_path={tmp_path / 'sweeps'}",
                                  "--set", f"run.output_dir={out}"]), "name")
    assert not any(tmp_path.rglob("*")) and not pathlib.Path("/etc/evil").exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", ""])
def test_unsafe_sweep_name_is_a_config_error(name: str, tmp_path, capsys) -> None:
    rc = main(["tune", "--config", SWEEP, "--set", f"sweep.name={name}",
               "--set", f"sweep.storage_path={tmp_path / 'sweeps'}", "--set", f"run.output_dir={tmp_path / 'runs'}"])
    _one_line_error(capsys, rc, "sweep.name")
    assert not any(tmp_path.rglob("*"))


@pytest.mark.parametrize("out", ["", "s3://bucket/runs"])
def test_output_dir_must_be_a_directory_path(out: str, capsys) -> None:
    _one_line_error(capsys, main(["show-config", "--config", DEBUG, "--set", f"run.output_dir={out}"]),
                    "run.output_dir")


def test_safe_names_still_work(capsys) -> None:
    assert main(["show-config", "--config", DEBUG, "--set", "name=debug-v2_run.1"]) == 0
    assert "name: debug-v2_run.1" in capsys.readouterr().out


def test_a_name_carrying_a_credential_is_refused_without_echoing_it(capsys) -> None:
    rc = main(["show-config", "--config", DEBUG, "--set", "name=debug?token=s3cr3t-7f2a"])
    err = _one_line_error(capsys, rc, "name")
    assert "s3cr3t" not in err
