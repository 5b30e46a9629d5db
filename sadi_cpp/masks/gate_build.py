"""Building a gate from contrastive texts and choosing its threshold::

    gate, report = build_gate(hook, "gate_pairs.jsonl")            # layer and threshold from the pairs
    gate, report = build_gate(hook, "gate_pairs.jsonl", dev="dev.jsonl")   # threshold from dev items
    save_gate(gate, "gemma.negative.gate.sadi.gguf")

A pair's positive text is an input the steering should act on, its negative text one it should
leave alone (any pairs schema: for {"prompt", "positive", "negative"} the texts are prompt +
completion). The residual stream after each layer is read at each text's last token, the token
where the gate decides at inference. Per layer, the direction is the mean positive minus the
mean negative row and the center their midpoint (CAST's condition vector, centred; see
sadi_cpp.gate).

Layer (unless given): each layer's direction is fitted on one half of the pairs and scored on the
other, and the other way round; the layer's quality is the area under the ROC curve of those
held-out scores (a threshold-free measure of separation). The lowest layer within 0.02 of the best
AUC wins: a lower gate leaves more layers steerable on the deciding token.

Threshold: the one with the best balanced accuracy (mean of the true-positive and true-negative
rates, so unequal numbers of positives and negatives do not tilt it), placed halfway between two
neighbouring scores: on the dev items when given, else on the held-out scores of the pairs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sadi_cpp import __version__
from sadi_cpp.data.pairs import PairsLike, pair_set
from sadi_cpp.errors import BadInputError
from sadi_cpp.gate import Gate
from sadi_cpp.llama.batch import BatchRow
from sadi_cpp.masks.fingerprint import hook_fingerprint

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook

LAYER_SLACK = 0.02  # AUC a lower layer may give up against the best one


@dataclass(frozen=True)
class Separation:
    """How well a threshold splits scores of texts that should fire (positives) from others."""

    threshold: float
    n_pos: int
    n_neg: int
    true_pos: int
    false_pos: int

    @property
    def precision(self) -> float:
        fired = self.true_pos + self.false_pos
        return self.true_pos / fired if fired else float("nan")

    @property
    def recall(self) -> float:
        return self.true_pos / self.n_pos if self.n_pos else float("nan")

    @property
    def balanced_accuracy(self) -> float:
        return 0.5 * (self.true_pos / self.n_pos + (self.n_neg - self.false_pos) / self.n_neg)

    def as_dict(self, where: str) -> Dict[str, object]:
        lo_p, hi_p = wilson(self.true_pos, self.true_pos + self.false_pos)
        lo_r, hi_r = wilson(self.true_pos, self.n_pos)
        return {"on": where, "threshold": self.threshold, "positives": self.n_pos, "negatives": self.n_neg,
                "precision": _round(self.precision), "precision_95ci": [_round(lo_p), _round(hi_p)],
                "recall": _round(self.recall), "recall_95ci": [_round(lo_r), _round(hi_r)],
                "balanced_accuracy": _round(self.balanced_accuracy)}


def _round(x: float) -> Optional[float]:
    return None if math.isnan(x) else round(x, 4)


def wilson(k: int, n: int, z: float = 1.959964) -> Tuple[float, float]:
    """The Wilson score interval (95%) of a proportion k/n; (nan, nan) for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, mid - half), min(1.0, mid + half)


def separation(pos: np.ndarray, neg: np.ndarray, threshold: float) -> Separation:
    t = float(np.float32(threshold))  # the engine compares with the float32 threshold
    return Separation(t, len(pos), len(neg), int((pos >= t).sum()), int((neg >= t).sum()))


def best_threshold(pos: np.ndarray, neg: np.ndarray) -> Separation:
    """The threshold of best balanced accuracy, halfway between two neighbouring scores (ties: the
    one nearest the middle of the tied run, so neither side is favoured)."""
    if len(pos) == 0 or len(neg) == 0:
        raise BadInputError("choosing a threshold needs texts on both sides (positives and negatives)", field="dev")
    s = np.unique(np.concatenate([pos, neg]))
    cuts = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
    cuts = np.clip(cuts, -1.0, 1.0)
    acc = np.array([0.5 * ((pos >= c).mean() + (neg < c).mean()) for c in cuts])
    best = np.flatnonzero(acc >= acc.max() - 1e-12)
    return separation(pos, neg, float(cuts[best[len(best) // 2]]))


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half."""
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def last_token_residuals(hook: Hook, texts: Sequence[str], progress: Optional[Callable[[int], None]] = None,
                         special: Sequence[bool] = ()) -> Tuple[np.ndarray, List[int]]:
    """The residual stream after every layer at each text's last token [n_used, n_layer, n_embd],
    and the indices of the texts used (a text longer than a decode is left out). Many texts per
    decode, each in a sequence of its own. ``special[i]``: text i's control-token text is read as
    control tokens (a chat-rendered pair)."""
    tokens = [hook.tokenize(t, special=bool(special) and special[i]) for i, t in enumerate(texts)]
    budget = min(hook.n_ctx, hook.n_batch)
    used = [i for i, t in enumerate(tokens) if len(t) <= budget]
    if progress is not None and len(used) < len(texts):
        progress(len(texts) - len(used))
    group: List[int] = []
    with hook.recording(sites=("residual",), positions="last") as rec:
        def flush() -> None:
            rows = [BatchRow(t, p, (seq,), False, 0 if p == len(tokens[i]) - 1 else -1)
                    for seq, i in enumerate(group) for p, t in enumerate(tokens[i])]
            hook.kv_clear()
            hook.decode(rows)  # rows recorded in batch order: the group's order
            if progress is not None:
                progress(len(group))
            group.clear()

        size = 0
        for i in used:
            if group and (size + len(tokens[i]) > budget or len(group) == hook.n_seq_max):
                flush()
                size = 0
            group.append(i)
            size += len(tokens[i])
        if group:
            flush()
    hook.kv_clear()
    return (rec.values("residual") if used else np.zeros((0, hook.shape.n_layer, hook.shape.n_embd), np.float32)), used


def _fit(pos: np.ndarray, neg: np.ndarray, layer: int) -> Tuple[np.ndarray, np.ndarray]:
    mp, mn = pos[:, layer].astype(np.float64).mean(0), neg[:, layer].astype(np.float64).mean(0)
    return (mp - mn).astype(np.float32), ((mp + mn) / 2).astype(np.float32)


def _held_out(pos: np.ndarray, neg: np.ndarray, layer: int) -> Tuple[np.ndarray, np.ndarray]:
    """Scores of every text from the direction fitted on the other half of the pairs."""
    halves = [np.arange(len(pos)) % 2 == k for k in (0, 1)]
    out_p, out_n = np.zeros(len(pos)), np.zeros(len(neg))
    for fit_on, score_on in (halves, halves[::-1]):
        d, c = _fit(pos[fit_on], neg[fit_on], layer)
        g = Gate(layer, d if np.any(d) else np.ones_like(d), c, 0.0)
        out_p[score_on], out_n[score_on] = g.score(pos[score_on, layer]), g.score(neg[score_on, layer])
    return out_p, out_n


def build_gate(hook: Hook, pairs: PairsLike, layer: Optional[int] = None, dev: Optional[PairsLike] = None,
               progress: Optional[Callable[[int], None]] = None) -> Tuple[Gate, Dict[str, object]]:
    """A gate from ``pairs`` on ``hook``'s model, and a report (layer AUCs, the threshold's
    precision and recall, where they were measured). ``progress`` is called once per text read."""
    pairs = pair_set(pairs)
    n_layer = hook.shape.n_layer
    if layer is not None and not 0 <= layer < n_layer - 1:
        raise BadInputError(f"the gate layer must be in 0..{n_layer - 2} (a layer must be left above it to steer), got {layer}",
                            field="layer")
    acts, used = last_token_residuals(hook, [t for p in pairs for t in (p.positive, p.negative)], progress,
                                      [p.special for p in pairs for _ in (0, 1)])
    keep = [i // 2 for i in used]
    whole = [k for k in set(keep) if keep.count(k) == 2]  # pairs with both texts read
    if len(whole) < 4:
        raise BadInputError(f"a gate needs at least 4 pairs that fit the context; {len(whole)} did", field="pairs")
    rows = {i: r for r, i in enumerate(used)}
    pos = acts[[rows[2 * k] for k in sorted(whole)]]
    neg = acts[[rows[2 * k + 1] for k in sorted(whole)]]
    aucs = [auc(*_held_out(pos, neg, il)) for il in range(n_layer - 1)]
    if layer is None:
        layer = next(il for il, a in enumerate(aucs) if a >= max(aucs) - LAYER_SLACK)
    direction, center = _fit(pos, neg, layer)
    if not np.any(direction):
        raise BadInputError(f"the pairs' two sides have the same mean at layer {layer}: nothing for a gate to tell apart",
                            field="pairs")
    gate = Gate(layer, direction, center, 0.0, model=hook_fingerprint(hook), n_pairs=len(whole),
                pairs_sha256=pairs.sha256, tool_version=__version__)
    report: Dict[str, object] = {"layer": layer, "layer_auc": [round(a, 4) for a in aucs], "n_pairs": len(whole),
                                 "skipped_texts": 2 * len(pairs) - len(used)}
    if dev is None:
        sep = best_threshold(*_held_out(pos, neg, layer))
        chosen = sep.as_dict("pairs (held-out halves)")
    else:
        gate, chosen = tune_threshold(hook, gate, dev, progress)
    report["threshold"] = chosen
    return gate.with_threshold(chosen["threshold"], json.dumps(chosen, sort_keys=True)), report


def gate_scores(hook: Hook, gate: Gate, pairs: PairsLike, progress: Optional[Callable[[int], None]] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
    """The gate's scores of the pairs' positive texts and of their negative texts."""
    pairs = pair_set(pairs)
    acts, used = last_token_residuals(hook, [t for p in pairs for t in (p.positive, p.negative)], progress,
                                      [p.special for p in pairs for _ in (0, 1)])
    scores = gate.score(acts[:, gate.layer]) if used else np.zeros(0)
    side = np.array(used, dtype=int) % 2
    return scores[side == 0], scores[side == 1]


def tune_threshold(hook: Hook, gate: Gate, dev: PairsLike, progress: Optional[Callable[[int], None]] = None
                   ) -> Tuple[Gate, Dict[str, object]]:
    """``gate`` with the threshold of best balanced accuracy on the dev pairs, and what it gave there."""
    pos, neg = gate_scores(hook, gate, dev, progress)
    chosen = best_threshold(pos, neg).as_dict("dev")
    return gate.with_threshold(chosen["threshold"], json.dumps(chosen, sort_keys=True)), chosen


def check_gate(hook: Hook, gate: Gate, test: PairsLike, progress: Optional[Callable[[int], None]] = None) -> Dict[str, object]:
    """Precision and recall (with 95% Wilson intervals) of ``gate`` as it is on held-out test pairs."""
    pos, neg = gate_scores(hook, gate, test, progress)
    if len(pos) == 0 or len(neg) == 0:
        raise BadInputError("no test texts fit the context", field="test")
    out = separation(pos, neg, gate.threshold).as_dict("test")
    out["auc"] = round(auc(pos, neg), 4)
    return out
