"""The position policy's choice of rows."""

import pytest

from sadi_cpp import BadInputError
from sadi_cpp.positions import PositionTracker, check_policy, rows_for


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


def test_tracker_follows_a_generate_and_the_steered_kv_entries():
    t = PositionTracker()
    t.steer_policy = "last+generated"
    with t.generating():
        t.before_eval(n_cached=3, n_new=5)  # the prompt: positions 3..7 (0..2 reused from the cache)
        assert t.last_prompt_pos == 7
        assert t.rows(first_pos=3, n_tokens=5, steering=True) == ([4], [])
        t.mark_steered(7)
        t.after_eval()
        t.before_eval(n_cached=8, n_new=1)  # a generated token
        assert t.rows(first_pos=8, n_tokens=1, steering=True) == ([0], [])
        assert t.last_prompt_pos == 7  # generated tokens do not move the prompt's end
        t.after_eval()
    assert not t.generated
    assert t.valid_prefix(9) == 7  # entries from the first steered position on are dropped
    t.before_eval(n_cached=7, n_new=2)  # re-evaluating from there clears the mark
    assert t.valid_prefix(9) == 9
    with t.as_generated():
        assert t.rows(first_pos=9, n_tokens=2, steering=True) == ([0, 1], [])
    assert t.rows(first_pos=9, n_tokens=2, steering=False) == ([], [])
