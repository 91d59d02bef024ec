"""Hostile files through the CLI: each is refused with one `error:` line naming the file, a non-zero exit,
and nothing created or overwritten (run directories, exports, the file itself)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from rllib_rec.cli import main
from rllib_rec.config import MAX_CONFIG_BYTES

ROOT = Path(__file__).parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"
FOREIGN_PARQUET = ROOT / "tests" / "data" / "obd" / "random_all.parquet"  # real Parquet, not an interaction log


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _refused(capsys, argv: list[str], *needles: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err[-2000:]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


BILLION_LAUGHS = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                           + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
                           + ["name: *i"]) + "\n"


HOSTILE_CONFIGS = {"bomb.yaml": "YAML alias bomb (billion laughs)", "deep.yaml": "mapping nested 200 deep",
                   "python.yaml": "`!!python/object/apply:os.system` tag", "big.yaml": "a file over 1 MiB",
                   "binary.yaml": "binary bytes, not YAML"}


@pytest.mark.parametrize("name, text, needle", [
    ("bomb.yaml", BILLION_LAUGHS, "aliases are not allowed"),
    ("deep.yaml", "run: " + "{a: " * 200 + "1" + "}" * 200 + "\n", ""),
    ("python.yaml", "name: !!python/object/apply:os.system ['touch /tmp/rllib_rec_pwned']\n", ""),
    ("big.yaml", "# " + "x" * MAX_CONFIG_BYTES + "\n", f"larger than {MAX_CONFIG_BYTES} bytes"),
    ("binary.yaml", "\x00\x01\x02 not yaml \xff", ""),
])
@pytest.mark.hostile("file", describe=lambda name, needle: (
    f"`train --config {name}`: {HOSTILE_CONFIGS[name]}",
    "one line naming the file" + (f": `{needle}`" if needle else "") + "; nothing created or modified"))
def test_hostile_config_files_are_refused(tmp_path: Path, capsys, name: str, text: str, needle: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    before = _digest(path)
    out = tmp_path / "runs"
    _refused(capsys, ["train", "--config", str(path), "--set", f"run.output_dir={out}"], str(path), needle)
    assert not out.exists()  # refused before any run directory or MLflow store
    assert _digest(path) == before
    assert not Path("/tmp/rllib_rec_pwned").exists()


@pytest.mark.hostile("file", rows=[
    ("`train --offline` a foreign Parquet file (Open Bandit Dataset rows)", "one line: not an rllib-rec interaction log"),
    ("`ope --logs` a foreign Parquet file", "one line naming the file"),
    ("`ope --logs` a Parquet file cut after 1,000 bytes", "one line: truncated or corrupt")])
def test_foreign_parquet_is_refused_by_offline_training_and_ope(tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs"
    _refused(capsys, ["train", "--config", str(DEBUG), "--offline", str(FOREIGN_PARQUET), "--set",
                      f"run.output_dir={out}"], str(FOREIGN_PARQUET), "not an rllib-rec interaction log")
    assert not out.exists()
    _refused(capsys, ["ope", "--logs", str(FOREIGN_PARQUET), "--policy", "history"], str(FOREIGN_PARQUET))
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(FOREIGN_PARQUET.read_bytes()[:1000])
    _refused(capsys, ["ope", "--logs", str(cut), "--policy", "history"], str(cut), "truncated or corrupt")


@pytest.fixture
def corrupt_run(trained_debug, tmp_path: Path) -> Path:
    """A copy of a trained debug run whose checkpoints' module weights are garbage."""
    run = tmp_path / "run"
    shutil.copytree(trained_debug.run_dir, run)
    for p in (run / "checkpoints").rglob("module_state.pkl"):
        p.write_bytes(b"\x00garbage" * 10)
    return run


@pytest.mark.hostile("file", rows=[
    (f"checkpoint whose module weights are garbage, to `{cmd}`", "one line: unreadable checkpoint; nothing modified")
    for cmd in ("export", "evaluate", "train --resume")])
def test_corrupt_checkpoint_is_refused_by_export_evaluate_and_resume(corrupt_run: Path, tmp_path: Path,
                                                                       capsys) -> None:
    before = _digest(corrupt_run)
    (ckpt,) = sorted((corrupt_run / "checkpoints").glob("iter_*"))[-1:]
    export_dir = tmp_path / "export"
    _refused(capsys, ["export", "--checkpoint", str(ckpt), "--no-mlflow", "--out", str(export_dir)],
             "unreadable checkpoint")
    assert not export_dir.exists()
    _refused(capsys, ["evaluate", "--checkpoint", str(ckpt)], "unreadable checkpoint")
    _refused(capsys, ["train", "--resume", str(corrupt_run), "--set", f"run.output_dir={tmp_path / 'store'}"],
             str(ckpt), "unreadable checkpoint")
    assert _digest(corrupt_run) == before  # nothing in the run was touched
