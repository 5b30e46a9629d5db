"""The position policy's choice of rows."""

import pytest

from sadi_cpp import BadInputError
from sadi_cpp.positions import check_policy, rows_for


def test_last_policy_picks_the_last_prompt_token_in_whichever_chunk_holds_it():
    assert rows_for("last", False, first_pos=0, n_tokens=8, last_prompt_pos=7) == [7]
    assert rows_for("last", False, first_pos=16, n_tokens=8, last_prompt_pos=20) == [4]
    assert rows_for("last", False, first_pos=0, n_tokens=8, last_prompt_pos=20) == []
    assert rows_for("last", True, first_pos=21, n_tokens=1, last_prompt_pos=20) == []


def test_wider_policies():
    assert rows_for("last+generated", False, 0, 4, 3) == [3]
    assert rows_for("last+generated", True, 4, 1, 3) == [0]
    assert rows_for("all", False, 0, 3, 2) == [0, 1, 2]
    assert rows_for("all", True, 9, 1, 2) == [0]


def test_unknown_policy():
    assert check_policy("all") == "all"
    with pytest.raises(BadInputError, match="last, last\\+generated, all"):
        check_policy("every")
