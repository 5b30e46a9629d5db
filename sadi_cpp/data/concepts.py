"""Contrastive pairs from two words: a template set's instructions hold ``{concept}``, filled once
with the positive and once with the negative word, and each instruction is followed by the same
continuation cut after 1, 2, ... of its words. The two texts of a pair differ only in the word, so
the units that differ between them are the concept's (repeng's idea of a dataset from two
adjectives; the templates are this project's own, in ``sadi_cpp/data/files``)::

    template = load_template("persona")
    pairs = concept_pairs(template, "happy", "sad", n=200, seed=0, frame=lambda s: s + "\\n\\n")

``frame`` turns an instruction into the text before the continuation: the model's chat template
for a chat model (the instruction as the user's turn, the model's turn opened), a blank line for a
plain one. Template files: ``{"instructions": [...], "continuations": [...]}``, every instruction
holding ``{concept}`` once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple, Union

import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.files import read_text

FILES = Path(__file__).with_name("files")
MAX_CANDIDATES = 1_000_000  # the draw permutes every candidate: a template file may not ask for more
TEMPLATES = ("persona", "tone", "topic")
SLOT = "{concept}"


@dataclass(frozen=True)
class TemplateSet:
    name: str
    instructions: Tuple[str, ...]
    continuations: Tuple[str, ...]

    def cuts(self) -> List[str]:
        """Every continuation cut after 1, 2, ... of its words, each text once (two continuations
        may begin alike)."""
        return list(dict.fromkeys(" ".join(c.split()[:k]) for c in self.continuations for k in range(1, len(c.split()) + 1)))

    def candidates(self) -> List[Tuple[int, str]]:
        """Every (instruction, cut continuation) a pair can be made of."""
        return [(i, cut) for i in range(len(self.instructions)) for cut in self.cuts()]


def _strings(obj: Dict[str, object], key: str, where: str) -> Tuple[str, ...]:
    value = obj.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise BadInputError(f"{where}: '{key}' must be a non-empty list of non-empty strings", field="template_file")
    return tuple(v.strip() for v in value)


def load_template(name_or_path: Union[str, Path]) -> TemplateSet:
    """A template set by name (persona, tone, topic) or from a JSON file of the same layout."""
    packaged = str(name_or_path) in TEMPLATES
    path = FILES / f"{name_or_path}.json" if packaged else Path(name_or_path)
    text, _ = read_text(path, "template")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(f"{path}: not JSON ({e.msg} at line {e.lineno})", field="template_file") from None
    if not isinstance(obj, dict):
        raise BadInputError(f"{path}: a template file is a JSON object with 'instructions' and 'continuations'", field="template_file")
    instructions = _strings(obj, "instructions", str(path))
    bad = [s for s in instructions if s.count(SLOT) != 1]
    if bad:
        raise BadInputError(f"{path}: every instruction must hold {SLOT} exactly once; this one does not: {bad[0]!r}",
                            field="template_file")
    continuations = _strings(obj, "continuations", str(path))
    n_words = sum(len(c.split()) for c in continuations)  # an upper bound of the distinct cuts
    if len(instructions) * n_words > MAX_CANDIDATES:
        raise BadInputError(f"{path}: {len(instructions)} instructions x {n_words} continuation words is more than "
                            f"{MAX_CANDIDATES:,} candidate pairs; use fewer or shorter ones", field="template_file")
    return TemplateSet(str(obj.get("name", path.stem)), instructions, continuations)


def check_words(positive: str, negative: str) -> Tuple[str, str]:
    words = (positive.strip(), negative.strip())
    for option, word in zip(("positive", "negative"), words):
        if not word or "\n" in word or "{" in word or "}" in word:
            raise BadInputError(f"--{option} must be a word or a short phrase on one line, without braces; got {word!r}",
                                field=option)
    if words[0] == words[1]:
        raise BadInputError(f"--positive and --negative are the same ({words[0]!r}): a pair needs two different words",
                            field="negative")
    return words


def concept_pairs(template: TemplateSet, positive: str, negative: str, n: int, seed: int,
                  frame: Callable[[str], str], special: bool = False) -> List[Dict[str, object]]:
    """``n`` pairs drawn without repetition (seeded) from the template set's candidates, as pair
    lines for a pairs file (``special``: the framed text holds control tokens)."""
    positive, negative = check_words(positive, negative)
    pool = template.candidates()
    if not 1 <= n <= len(pool):
        raise BadInputError(f"--n must be 1..{len(pool)}: the '{template.name}' templates make {len(pool)} different pairs",
                            field="n")
    picks = np.random.default_rng(seed).permutation(len(pool))[:n]
    lines: List[Dict[str, object]] = []
    for p in picks:
        i, cut = pool[int(p)]
        instruction = template.instructions[i]
        line: Dict[str, object] = {"positive": frame(instruction.replace(SLOT, positive)) + cut,
                                   "negative": frame(instruction.replace(SLOT, negative)) + cut}
        if special:
            line["special"] = True
        lines.append(line)
    return lines
