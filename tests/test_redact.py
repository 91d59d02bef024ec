"""The credential redactor hides secrets in URLs and parameters, and nothing else (issue 18, item 10:
`--set garbage` printed `override must look like section.key=***`)."""

from __future__ import annotations

import pathlib

import pytest

from rllib_rec.cli import main
from rllib_rec.training.tracking import redact

DEBUG = str(pathlib.Path(__file__).parent.parent / "configs" / "debug.yaml")


def test_bad_override_message_keeps_its_placeholder(capsys) -> None:
    rc = main(["show-config", "--config", DEBUG, "--set", "garbage"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.endswith("override must look like section.key=value"), err


@pytest.mark.parametrize("text, expected", [
    ("https://bot:pw@mlflow.example.com/x", "https://***@mlflow.example.com/x"),
    ("https://h/team?token=abc&page=2", "https://h/team?token=***&page=2"),
    ("s3://b/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ff00", "s3://b/k?X-Amz-Credential=***&X-Amz-Signature=***"),
    ("retry with api_key=abc123 later", "retry with api_key=*** later"),
    ("password=hunter2", "password=***"),
    ("spring.datasource.password=hunter2", "spring.datasource.password=***"),
    # not secrets: key paths and words that merely contain a secret word
    ("--set: x: override must look like section.key=value", "--set: x: override must look like section.key=value"),
    ("dqn.target_update_freq=500 model.num_heads=2", "dqn.target_update_freq=500 model.num_heads=2"),
])
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
