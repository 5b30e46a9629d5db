"""Which token rows are read or steered: the position policy.

SADI edits the activations of the LAST PROMPT TOKEN (the paper and its code). Generated tokens
are then left alone; they see the edit only through the KV cache. Two wider policies exist:

- ``last``            the last token of each prompt evaluation (default, the paper's);
- ``last+generated``  that token, and every token generated after it;
- ``all``             every token: all prompt tokens and every generated token.

A "prompt evaluation" is the first ``Llama.eval`` inside ``generate`` (so ``create_completion``,
``__call__`` and ``create_chat_completion``), or any direct ``Llama.eval`` call.
"""

from __future__ import annotations

from typing import List

POLICIES = ("last", "last+generated", "all")
DEFAULT_POLICY = "last"


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        from sadi_cpp.errors import BadInputError

        raise BadInputError(f"unknown position policy '{policy}': use one of {', '.join(POLICIES)}")
    return policy


def rows_for(policy: str, generated: bool, first_pos: int, n_tokens: int, last_prompt_pos: int) -> List[int]:
    """Rows of a single-sequence batch (positions first_pos .. first_pos+n_tokens-1) that the policy selects.

    ``generated`` tells whether the batch holds generated tokens; ``last_prompt_pos`` is the position
    of the current prompt evaluation's last token.
    """
    if policy == "all" or (generated and policy == "last+generated"):
        return list(range(n_tokens))
    if generated:
        return []
    row = last_prompt_pos - first_pos
    return [row] if 0 <= row < n_tokens else []
