"""What a model allows: its architecture, shape and which sites the engine can read and steer,
from the probe decode every attach runs (``sadi-cpp check MODEL``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Dict

from sadi_cpp.llama.hook import Hook
from sadi_cpp.sites import RECORD_SITES


def site_nodes(hook: Hook) -> Dict[str, str]:
    """The graph node each site reads, with L for the layer (e.g. ffn_geglu-L for neurons)."""
    neuron, hidden, expert = hook.engine.neuron_node(0), hook.engine.hidden_node(0), hook.engine.expert_node(0)
    return {"head": "kqv_out-L", "neuron": (neuron.rsplit("-", 1)[0] + "-L (input of ffn_down)") if neuron else "",
            "hidden": (hidden.rsplit("-", 1)[0] + "-L") if hidden else "", "residual": "l_out-L",
            "expert": (expert.rsplit("-", 1)[0] + "-L (input of ffn_moe_down)") if expert else ""}


def report(hook: Hook) -> Dict[str, Any]:
    """{model, arch, shape, n_vocab, sites: {site: {ok, node, problem}}} for ``hook``'s model."""
    nodes = site_nodes(hook)
    sites = {}
    for site in RECORD_SITES:
        problem = hook.site_problem(site)
        sites[site] = {"ok": not problem, "node": nodes[site] if not problem else None, "problem": problem or None}
    return {"model": hook.model_path, "arch": hook.shape.arch, "shape": asdict(hook.shape), "n_vocab": hook.llm.n_vocab(),
            "sites": sites}
