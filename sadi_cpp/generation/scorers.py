"""Behaviour scores of a generated text. A scorer takes (text, prompt) and gives a number; a
configuration's score is the mean over prompts (samples of a prompt averaged first).

- ``exact-match`` (question answering): 1 when the answer, cut at its first line break and
  normalised as TriviaQA's own evaluation does (lower case, punctuation and the articles a/an/the
  removed, white space collapsed), equals the normalised answer or one of its aliases, else 0.
- ``sentiment``: VADER's compound score in [-1, 1] (vaderSentiment, a lexicon and rule scorer:
  ``pip install 'sadi-cpp[sentiment]'``).
- ``regex``: 1 when any ``--pattern`` (a Python regular expression, case-insensitive) matches the text.
- ``keywords``: 1 when any ``--pattern`` occurs in the text as a whole word or phrase, ignoring case.
- ``module:function`` (or ``path/to/file.py:function``): a user's function ``f(text, row) -> number``
  (``row``: the prompt's JSON object); a bool counts as 0/1.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Sequence

from sadi_cpp.data.prompts import GenPrompt
from sadi_cpp.errors import BadInputError

SCORERS = ("exact-match", "sentiment", "regex", "keywords")


@dataclass(frozen=True)
class Scorer:
    name: str
    fn: Callable[[str, GenPrompt], float]

    def __call__(self, text: str, prompt: GenPrompt) -> float:
        try:
            value = self.fn(text, prompt)
        except BadInputError:
            raise
        except Exception as e:  # a user's function: any failure is named, with where it happened
            raise BadInputError(f"scorer {self.name} raised {type(e).__name__}: {e} (scoring a text of {prompt.where or 'a prompt'})",
                                field="scorer") from None
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadInputError(f"scorer {self.name} returned {value!r} for a text of {prompt.where or 'a prompt'}; "
                                "it must return a finite number (or a bool)", field="scorer")
        return float(value)


_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """TriviaQA's normalisation: lower case, punctuation and articles removed, white space collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(text: str, prompt: GenPrompt) -> float:
    if not prompt.answers:
        raise BadInputError(f"{prompt.where or 'a prompt'}: exact-match needs 'answer' or 'aliases' on every prompt",
                            field="scorer")
    lines = text.strip().splitlines()
    said = normalize_answer(lines[0] if lines else "")
    return float(any(said == normalize_answer(a) for a in prompt.answers))


def _vader() -> Callable[[str, GenPrompt], float]:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise BadInputError("the sentiment scorer needs vaderSentiment: pip install 'sadi-cpp[sentiment]' "
                            "(or pip install vaderSentiment)", field="scorer") from None
    analyzer = SentimentIntensityAnalyzer()
    return lambda text, prompt: float(analyzer.polarity_scores(text)["compound"])


def _patterns(name: str, patterns: Sequence[str]) -> Sequence[str]:
    if not patterns:
        raise BadInputError(f"the {name} scorer needs at least one --pattern", field="pattern")
    return patterns


def _regex(patterns: Sequence[str]) -> Callable[[str, GenPrompt], float]:
    compiled = []
    for p in _patterns("regex", patterns):
        try:
            compiled.append(re.compile(p, re.IGNORECASE))
        except re.error as e:
            raise BadInputError(f"--pattern {p!r} is not a regular expression: {e}", field="pattern") from None
    return lambda text, prompt: float(any(c.search(text) for c in compiled))


def _keywords(patterns: Sequence[str]) -> Callable[[str, GenPrompt], float]:
    words = [re.compile(r"(?<!\w)" + re.escape(w.strip()) + r"(?!\w)", re.IGNORECASE)
             for w in _patterns("keywords", patterns) if w.strip()]
    return lambda text, prompt: float(any(w.search(text) for w in words))


def _user_function(spec: str) -> Callable[[str, GenPrompt], float]:
    where, _, fname = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise BadInputError(f"scorer {spec}: no such file {path}", field="scorer")
            loaded = importlib.util.spec_from_file_location(f"sadi_user_scorer_{path.stem}", path)
            module: Any = importlib.util.module_from_spec(loaded)  # type: ignore[arg-type]
            loaded.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(where)
    except BadInputError:
        raise
    except Exception as e:  # an import error, or the module failing as it loads
        raise BadInputError(f"scorer {spec}: could not import {where} ({type(e).__name__}: {e})", field="scorer") from None
    fn = getattr(module, fname, None)
    if not callable(fn):
        raise BadInputError(f"scorer {spec}: {where} has no function {fname!r}", field="scorer")
    return lambda text, prompt: fn(text, dict(prompt.row))


def load_scorer(name: str, patterns: Sequence[str] = ()) -> Scorer:
    """The scorer called ``name`` (see the module's list), checked before any generation."""
    makers: Dict[str, Callable[[], Callable[[str, GenPrompt], float]]] = {
        "exact-match": lambda: exact_match, "sentiment": _vader,
        "regex": lambda: _regex(patterns), "keywords": lambda: _keywords(patterns),
    }
    if name in makers:
        return Scorer(name, makers[name]())
    if ":" in name and name.rpartition(":")[0] and name.rpartition(":")[2]:
        return Scorer(name, _user_function(name))
    raise BadInputError(f"unknown scorer {name!r}: use one of {', '.join(SCORERS)} or module:function "
                        "(a Python function f(text, row) -> number)", field="scorer")


def default_scorer(prompts: Sequence[GenPrompt]) -> str:
    """exact-match when every prompt carries answers, else sentiment."""
    return "exact-match" if all(p.answers for p in prompts) else "sentiment"


__all__ = ["SCORERS", "Scorer", "default_scorer", "exact_match", "load_scorer", "normalize_answer"]
