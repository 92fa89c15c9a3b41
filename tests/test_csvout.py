"""CSV formula neutralisation (issue 11, point 10): dispatcher.core.csvout.neutralise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.core.csvout import neutralise

#: What a spreadsheet or an importer may skip before it looks for a formula, written out here on its own.
INVISIBLE = [" ", "\t", "\r", "\n", "\x00", "\u00a0", "\u3000", "\ufeff", "\u200b", "\u2060"] + [
    chr(c) for c in range(0x2000, 0x200B)
]
SIGNS = ["=", "+", "-", "@", "＝", "＋", "－", "＠", "﹦", "﹢", "﹣"]


@pytest.mark.parametrize(
    "cell",
    [
        "\r=1+1",
        "\n=1+1",
        "\x00=1+1",
        "\t=1",
        " \t=1",
        "  \r\n@SUM(A1)",
        "\u2000=1",
        "\u2003+1",
        "\u200a-1",
        "\u3000＝1",
        "\u00a0@x",
        "\ufeff=1",
        "\u200b=1",
        "\u2060=1",
        " \u200b\u3000＋1",
        "\ufeff\u200b﹦1",
    ],
)
def test_cells_starting_with_control_or_unicode_spaces_before_a_formula_are_neutralised(cell: str) -> None:
    assert neutralise(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["\u2003山田", "\ufeffuser_id", "\u200b", "a\u200b=b", " 1=1", "山田=1"])
def test_invisible_characters_before_ordinary_text_are_kept(cell: str) -> None:
    assert neutralise(cell) == cell


@given(st.lists(st.sampled_from(INVISIBLE), max_size=6), st.sampled_from(SIGNS), st.text(max_size=20))
@settings(max_examples=300, deadline=None)
def test_any_run_of_invisible_characters_before_a_formula_sign_is_neutralised(
    lead: list[str], sign: str, rest: str
) -> None:
    # Given a cell of invisible characters, a formula sign (ASCII, full-width or small), then anything
    cell = "".join(lead) + sign + rest

    # When written to a CSV, then it starts with a quote a spreadsheet shows as text
    assert neutralise(cell) == "'" + cell
