"""The paper's prompt formats for its multiple-choice tasks, turning raw task rows into the
multiple-choice schema of :mod:`sadi_cpp.data.mcdata`.

The prompt strings are those of the SADI reference code (its ``load_dataset.py``); it joins the
prompt and the answer with one space, so every choice here starts with a space (``" A"``). The
raw rows are the field layouts of the usual releases (COPA premise/question/choices, SST-2
text/label, ...); ``label`` is always the 0-based index of the correct choice. No task data is
shipped: the user points at their own files.

>>> from sadi_cpp.data.tasks import convert
>>> row = convert("sst2", {"text": "a gem of a film .", "label": 1})
>>> row["choices"], row["label"], row["prompt"].endswith("a gem of a film .\\n\\nAnswer:")
([' Negative', ' Positive'], 1, True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

from sadi_cpp.errors import BadInputError
from sadi_cpp.files import read_jsonl

Row = Dict[str, Any]
LETTERS = ("A", "B", "C", "D")


def _get(row: Row, key: str) -> Any:
    if not isinstance(row, dict):
        raise BadInputError(f"a row must be a JSON object, got {type(row).__name__}")
    if key not in row:
        raise BadInputError(f"missing field '{key}'")
    return row[key]


def _text(row: Row, key: str) -> str:
    value = _get(row, key)
    if not isinstance(value, str):
        raise BadInputError(f"field '{key}' must be a string")
    return value.strip()


def _label(row: Row, n: int) -> int:
    value = _get(row, "label")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise BadInputError(f"field 'label' must be 0..{n - 1}, got {value!r}")
    return value


def _choices(row: Row, n: int) -> List[str]:
    value = _get(row, "choices")
    if not isinstance(value, list) or len(value) != n or not all(isinstance(c, str) for c in value):
        raise BadInputError(f"field 'choices' must be a list of {n} strings")
    return [c.strip() for c in value]


def copa(row: Row) -> Row:
    c = _choices(row, 2)
    prompt = (f"Question:\n{_text(row, 'premise')} Based on the previous passage, choose the most reasonable "
              f"{_text(row, 'question')}.\nA:{c[0]}\nB:{c[1]}\n\nAnswer:\n")
    return {"prompt": prompt, "choices": [" A", " B"], "label": _label(row, 2)}


def copa_cloze(row: Row) -> Row:
    """Not the paper's format: the premise continued by "because" (cause) or "so" (effect) and
    each alternative scored as the continuation, the way small base models read COPA best."""
    c = _choices(row, 2)
    link = {"cause": "because", "effect": "so"}.get(_text(row, "question"))
    if link is None:
        raise BadInputError("field 'question' must be 'cause' or 'effect'")
    premise = _text(row, "premise").rstrip(".")
    return {"prompt": f"{premise} {link}", "choices": [" " + x[:1].lower() + x[1:] for x in c], "label": _label(row, 2)}


def storycloze(row: Row) -> Row:
    c = _choices(row, 2)
    sentences = _get(row, "sentences")
    if not isinstance(sentences, list) or len(sentences) != 4:
        raise BadInputError("field 'sentences' must be a list of the story's 4 sentences")
    story = " ".join(s.strip() for s in sentences)
    prompt = f"{story}\nQuestion: What is a possible continuation for the story given the following options?\nA: {c[0]} B: {c[1]}\nAnswer:"
    return {"prompt": prompt, "choices": [" A", " B"], "label": _label(row, 2)}


def sst2(row: Row) -> Row:
    prompt = (f"Consider the sentiment expression in this sentence and respond briefly with 'positive' or 'negative'."
              f"\n\n{_text(row, 'text')}\n\nAnswer:")
    return {"prompt": prompt, "choices": [" Negative", " Positive"], "label": _label(row, 2)}


def boolq(row: Row) -> Row:
    prompt = (f"Is the answer to the question encapsulated in the passage? Please confirm with 'yes' or 'no'."
              f"\n\nPassage: {_text(row, 'passage')}\n\nQuestion: {_text(row, 'question')}\n\nAnswer:")
    return {"prompt": prompt, "choices": [" No", " Yes"], "label": _label(row, 2)}


def winogrande(row: Row) -> Row:
    prompt = (f"Please fill in the blanks. Write A or B as the answer.\n\nSentence: {_text(row, 'sentence')}"
              f"\nA. {_text(row, 'option1')}\nB. {_text(row, 'option2')}\nAnswer:")
    return {"prompt": prompt, "choices": [" A", " B"], "label": _label(row, 2)}


def mmlu(row: Row) -> Row:
    c = _choices(row, 4)
    prompt = (f"Question: {_text(row, 'question')}\nWhich of the following answers is correct?\n"
              + "".join(f"{letter}. {text}\n" for letter, text in zip(LETTERS, c))
              + "State the letter corresponding to the correct answer.\nAnswer:")
    if "label" not in row and isinstance(row.get("answer"), str) and row["answer"] in LETTERS:
        row = dict(row, label=LETTERS.index(row["answer"]))
    return {"prompt": prompt, "choices": [f" {x}" for x in LETTERS], "label": _label(row, 4)}


NLI_LABELS = ("entailment", "neutral", "contradiction")


def nli(row: Row) -> Row:
    prompt = (f"Answer whether the hypothesis is more likely to be true, false, or unclusive based on the given premise."
              f"\nPremise: {_text(row, 'premise')}\nHypothesis: {_text(row, 'hypothesis')}\nAnswer:")
    label = row.get("label")
    if isinstance(label, str) and label in NLI_LABELS:
        row = dict(row, label=NLI_LABELS.index(label))
    # the reference code's answer words, its spelling kept: entailment, neutral, contradiction
    return {"prompt": prompt, "choices": [" True", " unclusive", " False"], "label": _label(row, 3)}


TASKS: Dict[str, Callable[[Row], Row]] = {
    "copa": copa, "copa-cloze": copa_cloze, "storycloze": storycloze, "sst2": sst2, "boolq": boolq,
    "winogrande": winogrande, "mmlu": mmlu, "nli": nli,
}


def convert(task: str, row: Row) -> Row:
    """One raw row of ``task`` in the multiple-choice schema; BadInputError naming a missing or
    malformed field."""
    if task not in TASKS:
        raise BadInputError(f"unknown task '{task}': use one of {', '.join(TASKS)}")
    return TASKS[task](row)


def convert_file(task: str, path: Union[str, Path], start: int = 0, limit: Optional[int] = None) -> List[Row]:
    """Rows ``start .. start+limit`` of a raw JSONL task file, converted; errors name file and line."""
    if task not in TASKS:
        raise BadInputError(f"unknown task '{task}': use one of {', '.join(TASKS)}")
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: no such task file")
    if start < 0 or (limit is not None and limit < 1):
        raise BadInputError(f"start must be >= 0 and limit >= 1 (got {start}, {limit})", field="start" if start < 0 else "limit")
    out: List[Row] = []
    n_rows = 0
    for row, where in read_jsonl(p, "task"):
        n_rows += 1
        if n_rows <= start:
            continue
        if limit is not None and len(out) >= limit:
            break
        try:
            out.append(convert(task, row))
        except BadInputError as e:
            if str(e).startswith("missing field"):
                raise BadInputError(f"{where}: {e} for task {task}; is this a {task} file?") from None
            raise BadInputError(f"{where}: {e} (task {task})") from None
    if not out:
        raise BadInputError(f"{p}: no rows from row {start} on")
    return out
