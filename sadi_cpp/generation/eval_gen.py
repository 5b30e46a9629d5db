"""eval-gen: what steering does to what the model writes. Every prompt is generated unsteered and
under each setting (in the same decodes), every text is scored for behaviour (a scorer) and for
fluency (the unsteered model's log-likelihood per token, the share of degenerate texts), and each
setting is compared with unsteered on the same prompts::

    hook = sadi_cpp.load()
    prompts = read_prompts("neutral-test.jsonl")
    m = SadiMask.load("gemma.happy.head.sadi.gguf")
    r = eval_gen(hook, prompts, [Setting("sadi 5", Steering(m.units(), 5.0), "last+generated")],
                 load_scorer("sentiment"), Sampling(max_tokens=48))
    r.settings[1].diff, r.settings[1].diff_ci, r.settings[1].fluency

Per prompt, the samples' scores are averaged first; intervals are 95% percentile bootstraps over
prompts (the same resamples for every setting, so differences are paired).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sadi_cpp.data.prompts import GenPrompt
from sadi_cpp.errors import BadInputError
from sadi_cpp.evaluation.stats import Difference, mean_interval
from sadi_cpp.generation.fluency import degenerate, loglik_per_token
from sadi_cpp.generation.generate import Generation, Sampling, Setting, generate_many
from sadi_cpp.generation.scorers import Scorer
from sadi_cpp.llama.chat import chat_prompt

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook

UNSTEERED = Setting("unsteered", kind="unsteered")


@dataclass
class SettingResult(Difference):
    name: str
    kind: str
    strength: Optional[float]
    positions: str
    score: float  # mean behaviour score over prompts
    score_ci: Tuple[float, float]
    diff: float  # paired difference to unsteered (0 for unsteered itself)
    diff_ci: Tuple[float, float]
    fluency: float  # the unsteered model's mean log-likelihood per token of this setting's texts
    fluency_diff: float  # ... minus unsteered's own (negative: less fluent)
    fluency_diff_ci: Tuple[float, float]
    degenerate: float  # share of texts that are empty or repetitive
    empty: float
    mean_tokens: float
    gate_fired: Optional[int] = None  # prompts the setting's gate fired on (None: no gate)


@dataclass
class EvalGen:
    scorer: str
    n_prompts: int
    samples: int
    settings: List[SettingResult]  # unsteered first
    scores: np.ndarray  # [setting, prompt, sample]
    fluency: np.ndarray  # [setting, prompt, sample] log-likelihood per token (nan: an empty text)
    generations: Dict[Tuple[int, int, int], Generation]

    def texts(self) -> List[Dict[str, Any]]:
        """Every generated text with its scores, for --texts."""
        rows = []
        for (c, i, s), g in sorted(self.generations.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
            ll = self.fluency[c, i, s]
            rows.append({"prompt": i, "setting": self.settings[c].name, "sample": s, "text": g.text, "finish": g.finish,
                         "score": float(self.scores[c, i, s]), "loglik_per_token": None if np.isnan(ll) else float(ll),
                         "tokens": len(g.tokens)})
        return rows

    def as_dict(self) -> Dict[str, Any]:
        return {"scorer": self.scorer, "n_prompts": self.n_prompts, "samples": self.samples,
                "settings": [s.as_dict() for s in self.settings]}


def prompt_tokens(hook: Hook, prompts: Sequence[GenPrompt], chat: bool) -> List[List[int]]:
    """What each prompt evaluates: the chat format's tokens of a user turn, or the text as a
    completion prompt reads it (control-token text parsed, as ``generate`` does)."""
    if chat:
        return [chat_prompt(hook, [{"role": "user", "content": p.prompt}])[0] for p in prompts]
    return [hook.tokenize(p.prompt, special=True) for p in prompts]


def eval_gen(hook: Hook, prompts: Sequence[GenPrompt], settings: Sequence[Setting], scorer: Scorer, sampling: Sampling,
             chat: bool = False, progress: Optional[Callable[[int], None]] = None) -> EvalGen:
    """Generate, score and compare; ``progress`` is called per text generated and per text scored
    for fluency (2 x prompts x (settings + 1) x samples calls in all)."""
    everything = [UNSTEERED, *settings]
    tokens = prompt_tokens(hook, prompts, chat)
    longest = max(len(t) for t in tokens)
    if longest + sampling.max_tokens > min(hook.n_batch, hook.n_ctx):  # fluency scores a text in one decode
        raise BadInputError(f"the longest prompt ({longest} tokens) and {sampling.max_tokens} generated tokens do not fit one "
                            f"decode of {min(hook.n_batch, hook.n_ctx)} tokens, which scoring a text's fluency needs: "
                            "use fewer --max-tokens or shorter prompts", field="max_tokens")
    made = generate_many(hook, tokens, everything, sampling, progress)
    shape = (len(everything), len(prompts), sampling.samples)
    units = sorted(made.texts)
    scores = np.zeros(shape)
    for c, i, s in units:
        scores[c, i, s] = scorer(made.texts[(c, i, s)].text, prompts[i])
    ll = loglik_per_token(hook, [tokens[i] for _, i, _ in units], [made.texts[u].tokens for u in units], progress)
    fluency = np.full(shape, np.nan)
    for k, u in enumerate(units):
        fluency[u] = ll[k]
    results = [_summary(setting, c, scores, fluency, made) for c, setting in enumerate(everything)]
    return EvalGen(scorer.name, len(prompts), sampling.samples, results, scores, fluency, made.texts)


def per_prompt(x: np.ndarray) -> np.ndarray:
    """[prompt, sample] -> [prompt]: the mean of each prompt's finite samples (nan if none)."""
    finite = np.isfinite(x)
    counts = finite.sum(axis=1)
    sums = np.where(finite, x, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _summary(setting: Setting, c: int, scores: np.ndarray, fluency: np.ndarray, made: Any) -> SettingResult:
    score, score_ci = mean_interval(per_prompt(scores[c]))
    diff, diff_ci = mean_interval(per_prompt(scores[c]) - per_prompt(scores[0]))
    flu = per_prompt(fluency[c])
    flu_diff, flu_diff_ci = mean_interval(flu - per_prompt(fluency[0]))
    texts = [g for (cc, _, _), g in made.texts.items() if cc == c]
    verdicts = [degenerate(g.text) for g in texts]
    fired = made.fired[c]
    return SettingResult(
        setting.name, setting.kind, setting.strength, setting.positions, score, score_ci, diff, diff_ci,
        mean_interval(flu)[0], flu_diff, flu_diff_ci,
        float(np.mean([e or r for e, r in verdicts])), float(np.mean([e for e, _ in verdicts])),
        float(np.mean([len(g.tokens) for g in texts])),
        None if np.isnan(fired).all() else int(np.nansum(fired)),
    )
