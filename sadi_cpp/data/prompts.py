"""Prompts for open-ended generation (eval-gen, tune-gen): one JSON object per line with
``prompt`` and, for question answering, ``answer`` and/or ``aliases`` (the accepted answers).
Other fields are kept and handed to a user's scorer.

Also the generation tasks of ``prepare``: ``triviaqa`` (questions in the format of the data's
source, ``Question: ...\\nAnswer:``; the SADI reference code has no TriviaQA loader to copy a
format from), ``triviaqa-pairs`` (the same prompt with the correct answer against the answer of
another question, for build-mask), and ``neutral`` (this project's open prompts about everyday
things, for steering tone or persona; a dev and a test split with no prompt in common).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.files import read_jsonl

FILES = Path(__file__).with_name("files")
GEN_TASKS = ("triviaqa", "triviaqa-pairs", "neutral")
NEUTRAL_SPLITS = ("dev", "test")


@dataclass(frozen=True)
class GenPrompt:
    prompt: str
    answers: Tuple[str, ...] = ()  # the answer and its aliases (empty: not a QA prompt)
    row: Dict[str, Any] = field(default_factory=dict, compare=False)  # the whole line, for a user's scorer
    where: str = ""


def parse_prompt(obj: Any, where: str) -> GenPrompt:
    if not isinstance(obj, dict):
        raise BadInputError(f"{where}: a prompt line must be a JSON object with 'prompt'")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadInputError(f"{where}: field 'prompt' must be a non-empty string")
    answers: List[str] = []
    if "answer" in obj:
        if not isinstance(obj["answer"], str):
            raise BadInputError(f"{where}: field 'answer' must be a string")
        answers.append(obj["answer"])
    if "aliases" in obj:
        aliases = obj["aliases"]
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise BadInputError(f"{where}: field 'aliases' must be a list of strings")
        answers += [a for a in aliases if a not in answers]
    return GenPrompt(prompt, tuple(answers), obj, where)


def read_prompts(path: Union[str, Path], limit: Optional[int] = None) -> List[GenPrompt]:
    out: List[GenPrompt] = []
    for obj, where in read_jsonl(path, "prompts"):
        if limit is not None and len(out) >= limit:
            break
        out.append(parse_prompt(obj, where))
    if not out:
        raise BadInputError(f"{path}: no prompts in the file (expected JSON lines with 'prompt')")
    return out


def _question(row: Any, where: str) -> Tuple[str, str, List[str]]:
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
        raise BadInputError(f"{where}: a TriviaQA row needs 'question' and 'answer' strings (and 'aliases', a list)")
    aliases = row.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise BadInputError(f"{where}: field 'aliases' must be a list of strings")
    return row["question"].strip(), row["answer"].strip(), aliases


def triviaqa_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def convert_generation(task: str, raw: Optional[Path], start: int = 0, limit: Optional[int] = None,
                       split: str = "dev", seed: int = 0) -> List[Dict[str, Any]]:
    """The rows ``prepare`` writes for a generation task."""
    if task == "neutral":
        if split not in NEUTRAL_SPLITS:
            raise BadInputError(f"--split must be one of {', '.join(NEUTRAL_SPLITS)}, got {split!r}", field="split")
        rows = [obj for obj, _ in read_jsonl(FILES / f"neutral-{split}.jsonl", "prompts")]
        return rows[start:None if limit is None else start + limit]
    if raw is None:
        raise BadInputError(f"prepare {task} needs the task's JSONL file (RAW)", field="raw")
    rows_in = list(read_jsonl(raw, "TriviaQA"))[start:]
    rows_in = rows_in[:limit] if limit is not None else rows_in
    questions = [_question(row, where) for row, where in rows_in]
    if task == "triviaqa":
        return [{"prompt": triviaqa_prompt(q), "answer": a, "aliases": al} for q, a, al in questions]
    if len(questions) < 2:
        raise BadInputError("triviaqa-pairs needs at least 2 questions (a wrong answer is another question's answer)")
    # the wrong answer: the answer of another question, by a seeded derangement (a shift of a permutation)
    order = np.random.default_rng(seed).permutation(len(questions))
    other = {int(order[k]): int(order[(k + 1) % len(order)]) for k in range(len(order))}
    out = []
    for i, (q, a, aliases) in enumerate(questions):
        wrong = questions[other[i]][1]
        if wrong.lower() in {x.lower() for x in [a, *aliases]}:
            continue  # two questions with the same answer: no wrong answer here
        out.append({"prompt": triviaqa_prompt(q), "positive": " " + a, "negative": " " + wrong})
    return out

