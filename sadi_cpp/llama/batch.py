"""Batches of many sequences: the rows of one llama_decode, written into llama.cpp's native batch
with the engine's lists of steered and recorded rows."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from sadi_cpp.errors import BadInputError

# Accumulator slots a recording may use: build-mask needs two (positive, negative); the bound
# keeps a typo such as slot 10**9 from allocating until the process dies.
MAX_SLOTS = 1024


class BatchRow(NamedTuple):
    """One row of :meth:`Hook.decode`: a token at a position in one or more sequences; ``steer``:
    edit it with its sequence's configuration; ``record``: the accumulator slot an active
    recording adds it to (-1: not recorded)."""

    token: int
    pos: int
    seqs: Tuple[int, ...]
    steer: bool = False
    record: int = -1


class RowLists(NamedTuple):
    """What the engine is told about one decode."""

    steer_rows: List[int]
    steer_configs: List[int]
    record_rows: List[int]
    record_slots: List[int]
    steer_decide: List[int]  # per steered row: 1 where it decides its sequence's gate
    deciding: Dict[int, Tuple[int, ...]]  # index in steer_rows -> the sequences whose gate it decides (the row's)


def fill(native: Any, rows: Sequence[BatchRow], outputs: Sequence[int], plan: Callable[[int], Optional[Tuple[int, bool]]],
         n_seq_max: int, recording: bool) -> RowLists:
    """Write ``rows`` into the native llama_batch (``outputs``: the rows that produce logits) and
    list the rows to steer (with the configuration ``plan`` gives their first sequence, and
    whether the row decides its gate) and to record (with their slot)."""
    if list(outputs) != sorted(set(outputs)) or (outputs and not 0 <= outputs[0] <= outputs[-1] < len(rows)):
        raise BadInputError("logits rows must be ascending, unique row indices of the decode", field="logits")
    lists = RowLists([], [], [], [], [], {})
    native.n_tokens = len(rows)
    for i, (tok, pos, seqs, steer, record) in enumerate(rows):
        if not 1 <= len(seqs) <= n_seq_max or not all(0 <= s < n_seq_max for s in seqs):
            raise BadInputError(f"row {i}: sequence ids must be 1..{n_seq_max} ids in 0..{n_seq_max - 1}, got {seqs}", field="seqs")
        native.token[i], native.pos[i], native.n_seq_id[i], native.logits[i] = tok, pos, len(seqs), 0
        for k, s in enumerate(seqs):
            native.seq_id[i][k] = s
        how = plan(seqs[0]) if steer else None
        if how is not None:
            if how[1] and any(seqs[0] in d for d in lists.deciding.values()):
                raise BadInputError(f"row {i}: sequence {seqs[0]}'s gate decides at its first steered row; steer only one row "
                                    "of a gated sequence in the decode that decides it", field="rows")
            if how[1]:
                lists.deciding[len(lists.steer_rows)] = tuple(seqs)
            lists.steer_rows.append(i)
            lists.steer_configs.append(how[0])
            lists.steer_decide.append(int(how[1]))
        if recording and record >= 0:
            if record >= MAX_SLOTS:
                raise BadInputError(f"row {i}: accumulator slot {record} is outside 0..{MAX_SLOTS - 1}", field="record")
            lists.record_rows.append(i)
            lists.record_slots.append(record)
    for i in outputs:
        native.logits[i] = 1
    return lists
