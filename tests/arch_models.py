"""Tiny GGUFs of many llama.cpp architectures from the one set of TinyLlama weights: each family
gets the tensors and keys its graph builder loads (fused QKV, q/k norms, post norms, biases,
parallel attention and FFN, scales), f32 or with its large matrices in Q8_0.

The names that steering folds into are the same everywhere (attn_output.weight, ffn_down.weight
and, with a bias after it, ffn_down.bias), so test_architectures.py folds by name."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Optional

import gguf
import numpy as np

from tiny_model import TinyLlama

# family -> what makes its graph differ from llama's
FAMILIES = {
    "llama": "the reference: RMS norms, SwiGLU, rope (Llama 2/3, Mistral)",
    "qwen2": "q/k/v biases",
    "qwen3": "q/k RMS norms per head",
    "gemma2": "post-attention and post-FFN norms, tied output, sliding window, scaled embeddings",
    "gemma3": "gemma2's norms plus q/k norms, local/global attention layers",
    "phi3": "fused QKV projection, fused gate+up projection",
    "olmo2": "no pre-norms: post norms only, q/k norms over the whole projection",
    "granite": "embedding, residual, attention and logit scales",
    "command-r": "parallel attention and FFN from one layer norm (Cohere Command-R)",
    "gptneox": "parallel residual, layer norms and biases everywhere, fused QKV, GELU FFN without gate",
}
NOT_RMS = ("command-r", "gptneox")  # layer norms


def _q8_0(arr: np.ndarray) -> Optional[np.ndarray]:
    """Q8_0 bytes of a matrix whose rows fit whole 32-value blocks, else None (stays f32)."""
    if arr.ndim != 2 or arr.shape[1] % 32:
        return None
    return gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)


def tensors_for(tiny: TinyLlama, arch: str) -> Dict[str, np.ndarray]:
    """The tensor set of ``arch`` built from the tiny model's weights."""
    rng = np.random.default_rng(tiny.seed + 11)
    w = dict(tiny.w)
    e, hd, nh, nkv, ff = tiny.n_embd, tiny.head_dim, tiny.n_head, tiny.n_head_kv, tiny.n_ff

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    def bias(n: int) -> np.ndarray:
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    if arch in ("llama", "qwen2", "qwen3"):
        w.update(tiny._extra_tensors(arch))
        return w
    if arch in ("gemma2", "gemma3", "command-r"):
        del w["output.weight"]  # tied to token_embd
    for il in range(tiny.n_layer):
        p = f"blk.{il}."
        if arch in ("gemma2", "gemma3", "olmo2"):
            w[p + "post_attention_norm.weight"] = norm(e)
            w[p + "post_ffw_norm.weight"] = norm(e)
        if arch == "gemma3":
            w[p + "attn_q_norm.weight"] = norm(hd)
            w[p + "attn_k_norm.weight"] = norm(hd)
        if arch == "olmo2":
            del w[p + "attn_norm.weight"], w[p + "ffn_norm.weight"]
            w[p + "attn_q_norm.weight"] = norm(nh * hd)
            w[p + "attn_k_norm.weight"] = norm(nkv * hd)
        if arch in ("phi3", "gptneox"):
            qkv = [w.pop(p + f"attn_{k}.weight") for k in "qkv"]
            w[p + "attn_qkv.weight"] = np.concatenate(qkv, axis=0)
        if arch == "phi3":
            w[p + "ffn_up.weight"] = np.concatenate([w.pop(p + "ffn_gate.weight"), w[p + "ffn_up.weight"]], axis=0)
        if arch == "command-r":
            del w[p + "ffn_norm.weight"]  # one norm feeds attention and FFN
        if arch == "gptneox":
            del w[p + "ffn_gate.weight"]
            w[p + "attn_norm.bias"] = bias(e)
            w[p + "ffn_norm.bias"] = bias(e)
            w[p + "attn_qkv.bias"] = bias(nh * hd + 2 * nkv * hd)
            w[p + "attn_output.bias"] = bias(e)
            w[p + "ffn_up.bias"] = bias(ff)
            w[p + "ffn_down.bias"] = bias(e)
    if arch == "gptneox":
        w["output_norm.bias"] = bias(e)
    return w


def write_arch(tiny: TinyLlama, arch: str, path: Path, quant: bool = False,
               edit: Optional[Callable[[Dict[str, np.ndarray]], None]] = None) -> Path:
    """Write ``arch``'s tiny GGUF; ``quant``: matrices with whole 32-value rows in Q8_0, except the
    two that steering folds into (attn_output, ffn_down), kept f32 so that folding stays exact;
    ``edit`` changes the f32 tensors before they are written."""
    if arch not in FAMILIES:
        raise ValueError(f"no tiny {arch} model")
    tensors = {k: v.copy() for k, v in tensors_for(tiny, arch).items()}
    if edit is not None:
        edit(tensors)
    writer = tiny.writer(path, arch, head_dims=True, layer_norm=arch in NOT_RMS,
                         file_type=gguf.LlamaFileType.MOSTLY_Q8_0 if quant else gguf.LlamaFileType.ALL_F32)
    if arch == "granite":
        writer.add_logit_scale(0.5)
        writer.add_residual_scale(0.7)
        writer.add_embedding_scale(2.0)
        writer.add_attention_scale(0.3)
    if arch == "gptneox":
        writer.add_parallel_residual(True)
    if arch in ("gemma2", "gemma3"):
        writer.add_sliding_window(16)  # shorter than the test prompts: the local layers really are local
    for name, arr in tensors.items():
        q = _q8_0(arr) if quant and name.split(".")[-2] not in ("attn_output", "ffn_down") else None
        if q is not None:
            writer.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, arr.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
