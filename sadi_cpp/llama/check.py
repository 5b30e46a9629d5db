"""What a model allows: its architecture, shape and which sites the engine can read and steer,
from the probe decode every attach runs (``sadi-cpp check MODEL``), and which device computes each
layer's site nodes (the CPU, or RPC workers)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Dict, List

from sadi_cpp.llama.rpc import placement
from sadi_cpp.sites import RECORD_SITES

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook

# what the node of a site is, after its name
_ROLE = {"neuron": " (input of ffn_down)", "expert": " (input of ffn_moe_down)"}


def site_node(hook: Hook, site: str) -> str:
    """The graph node ``site`` reads, with L for the layer (e.g. ffn_geglu-L for neurons); '' if none."""
    node = hook.engine.site_node(site, 0)
    return node.rsplit("-", 1)[0] + "-L" + _ROLE.get(site, "") if node else ""


def spans(devices: List[str]) -> List[Dict[str, Any]]:
    """Runs of consecutive layers on one device: [{first, last, device}]."""
    out: List[Dict[str, Any]] = []
    for il, d in enumerate(devices):
        if out and out[-1]["device"] == d:
            out[-1]["last"] = il
        else:
            out.append({"first": il, "last": il, "device": d})
    return out


def report(hook: Hook) -> Dict[str, Any]:
    """{model, arch, shape, n_vocab, sites: {site: {ok, node, problem, devices}}, workers} for
    ``hook``'s model; ``devices``: which device computes the site's node, by runs of layers."""
    where = placement(hook)
    sites = {}
    for site in RECORD_SITES:
        problem = hook.site_problem(site)
        sites[site] = {"ok": not problem, "node": site_node(hook, site) if not problem else None, "problem": problem or None,
                       "devices": spans(where[site]) if site in where else None}
    return {"model": hook.model_path, "arch": hook.shape.arch, "shape": asdict(hook.shape), "n_vocab": hook.n_vocab,
            "sites": sites, "workers": hook.workers}
