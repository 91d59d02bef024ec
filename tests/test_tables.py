"""rllib_rec.tables.format_table: the one table formatter (CLI, bench scripts, OPE reports)."""

from __future__ import annotations

import pytest

from rllib_rec.tables import format_table


def test_plain_text_table() -> None:
    out = format_table(["policy", "return", "n"], [["random", 1.23456, 10], ["myopic oracle", 2345.6, 1000]])
    assert out.splitlines() == [
        "policy         return     n",
        "-------------  ------  ----",
        "random          1.235    10",
        "myopic oracle   2,346  1000",
    ]


def test_markdown_table() -> None:
    out = format_table(["fault", "outcome"], [["env crash", "completed 6/6"], ["a | b", "ok"]], markdown=True)
    assert out.splitlines() == ["| fault | outcome |", "|---|---|", "| env crash | completed 6/6 |",
                                "| a \\| b | ok |"]


@pytest.mark.parametrize("markdown", [False, True])
def test_rows_must_match_the_headers(markdown: bool) -> None:
    with pytest.raises(ValueError, match="2 cells"):
        format_table(["a", "b"], [["x"]], markdown=markdown)
