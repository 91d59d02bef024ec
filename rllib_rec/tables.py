"""Plain-text tables shared by ``baselines``, ``evaluate`` and the bench scripts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_table", "policy_table"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False) -> str:
    """Plain text: the first column left-aligned, the others right-aligned, a dashed rule under the header.
    Floats print with 3 decimals (``1,234`` from 1000 up); format a cell yourself for anything else.
    ``markdown=True``: a GitHub-flavoured Markdown table instead (unpadded; ``|`` in a cell is escaped)."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    if any(len(r) != len(headers) for r in cells):
        raise ValueError(f"every row needs {len(headers)} cells (one per header)")
    if markdown:
        lines = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells]
        lines.insert(1, "|" + "|".join("---" for _ in headers) + "|")
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def policy_table(summaries: Mapping[str, Mapping[str, float]]) -> str:
    """One row per policy: mean return ± 95% CI, episode length, clicks, purchases, churn rate, and the share
    of recommendations that were clickbait ("-" where a summary does not record it)."""
    headers = ["policy", "return", "±95% CI", "episodes", "length", "clicks", "purchases", "churn", "clickbait"]
    rows = [
        [name, s["return_mean"], s["return_ci95"], int(s["episodes"]), s["length_mean"], s["clicks_mean"],
         s["purchases_mean"], s["churn_rate"], s.get("clickbait_share", "-")]
        for name, s in summaries.items()
    ]
    return format_table(headers, rows)
