"""A tiny llama-architecture model: written as an f32 GGUF with gguf-py, and an independent numpy
forward pass of the same weights that the engine's readings and edits must match (the oracle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import gguf
import numpy as np

# Edits for the oracle: (site, layer) -> (rows, bool mask over the site's values, delta[, vector
# added to those rows after the scaling]). Sites: head, neuron, hidden, residual (layer output).
Edits = Dict[Tuple[str, int], tuple]


@dataclass
class TinyLlama:
    n_layer: int = 3
    n_embd: int = 32
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 8
    n_ff: int = 48
    n_ctx: int = 256
    eps: float = 1e-5
    rope_base: float = 10000.0
    seed: int = 0
    w: Dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        tokens, _, _ = self.vocab()
        n_vocab = len(tokens)

        def mat(rows: int, cols: int, scale: float) -> np.ndarray:
            return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

        def norm(n: int) -> np.ndarray:
            return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

        e, hd = self.n_embd, self.head_dim
        self.w["token_embd.weight"] = mat(n_vocab, e, 1.0)
        self.w["output_norm.weight"] = norm(e)
        self.w["output.weight"] = mat(n_vocab, e, 0.3)
        for il in range(self.n_layer):
            p = f"blk.{il}."
            self.w[p + "attn_norm.weight"] = norm(e)
            self.w[p + "attn_q.weight"] = mat(self.n_head * hd, e, 0.4)
            self.w[p + "attn_k.weight"] = mat(self.n_head_kv * hd, e, 0.4)
            self.w[p + "attn_v.weight"] = mat(self.n_head_kv * hd, e, 0.4)
            self.w[p + "attn_output.weight"] = mat(e, self.n_head * hd, 0.3)
            self.w[p + "ffn_norm.weight"] = norm(e)
            self.w[p + "ffn_gate.weight"] = mat(self.n_ff, e, 0.3)
            self.w[p + "ffn_up.weight"] = mat(self.n_ff, e, 0.3)
            self.w[p + "ffn_down.weight"] = mat(e, self.n_ff, 0.3)

    @staticmethod
    def vocab():
        """A byte-fallback SentencePiece vocabulary: 3 specials and the 256 byte tokens."""
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        scores = [0.0] * len(tokens)
        types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
        return tokens, scores, types

    @property
    def n_vocab(self) -> int:
        return self.w["token_embd.weight"].shape[0]

    def write(self, path: Path, n_expert: int = 0, chat_template: Optional[str] = None, arch: str = "llama",
              edit: Optional[Callable[[Dict[str, np.ndarray]], None]] = None) -> Path:
        """Write the GGUF. ``n_expert > 0`` writes a mixture-of-experts FFN instead of the dense one
        (no dense ffn_down: a model whose neuron and hidden sites the engine must refuse);
        ``chat_template`` adds tokenizer.chat_template. ``arch``: llama, or another llama.cpp
        graph builder of the same weights plus its own (qwen2: q/k/v biases; qwen3: q/k norms).
        The numpy oracle models llama only; the other architectures are checked by weight
        folding (test_folding.py), whose ``edit`` changes the tensors just before they are written."""
        writer = self.writer(path, arch, head_dims=arch == "qwen3")
        if chat_template is not None:
            writer.add_chat_template(chat_template)
        tensors = dict(self.w)
        tensors.update(self._extra_tensors(arch))
        if n_expert:
            writer.add_expert_count(n_expert)
            writer.add_expert_used_count(1)
            rng = np.random.default_rng(self.seed + 1)
            for il in range(self.n_layer):
                p = f"blk.{il}."
                for kind in ("gate", "up", "down"):
                    del tensors[p + f"ffn_{kind}.weight"]
                shape = {"gate": (self.n_ff, self.n_embd), "up": (self.n_ff, self.n_embd), "down": (self.n_embd, self.n_ff)}
                for kind, (rows, cols) in shape.items():
                    tensors[p + f"ffn_{kind}_exps.weight"] = (0.3 * rng.standard_normal((n_expert, rows, cols))).astype(np.float32)
                tensors[p + "ffn_gate_inp.weight"] = (0.3 * rng.standard_normal((n_expert, self.n_embd))).astype(np.float32)
        if edit is not None:
            edit(tensors)
        for name, arr in tensors.items():
            writer.add_tensor(name, arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    def writer(self, path: Path, arch: str, head_dims: bool = False, layer_norm: bool = False,
               file_type: "gguf.LlamaFileType" = gguf.LlamaFileType.ALL_F32) -> gguf.GGUFWriter:
        """A GGUFWriter holding the keys every tiny model shares: the shape, the norm epsilon (RMS,
        or ``layer_norm``), rope, the byte vocabulary; ``head_dims`` adds key/value lengths."""
        writer = gguf.GGUFWriter(str(path), arch)
        # not the family's name: llama.cpp treats a model named "phi3" as having Phi-3's special tokens
        writer.add_name("tiny-test")
        writer.add_block_count(self.n_layer)
        writer.add_context_length(self.n_ctx)
        writer.add_embedding_length(self.n_embd)
        writer.add_feed_forward_length(self.n_ff)
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head_kv)
        if layer_norm:
            writer.add_layer_norm_eps(self.eps)
        else:
            writer.add_layer_norm_rms_eps(self.eps)
        writer.add_rope_freq_base(self.rope_base)
        writer.add_rope_dimension_count(self.head_dim)
        if head_dims:
            writer.add_key_length(self.head_dim)
            writer.add_value_length(self.head_dim)
        writer.add_file_type(file_type)
        tokens, scores, types = self.vocab()
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
        writer.add_add_bos_token(True)
        return writer

    def _extra_tensors(self, arch: str) -> Dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed + 7)
        out: Dict[str, np.ndarray] = {}
        for il in range(self.n_layer):
            p = f"blk.{il}."
            if arch == "qwen2":
                for k, n in (("q", self.n_head), ("k", self.n_head_kv), ("v", self.n_head_kv)):
                    out[p + f"attn_{k}.bias"] = (0.1 * rng.standard_normal(n * self.head_dim)).astype(np.float32)
            elif arch == "qwen3":
                for k in ("q", "k"):
                    out[p + f"attn_{k}_norm.weight"] = (1 + 0.1 * rng.standard_normal(self.head_dim)).astype(np.float32)
            elif arch != "llama":
                raise ValueError(f"no tiny {arch} model")
        return out

    # ---- the oracle ----

    def _rms(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def _rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """llama.cpp's normal rope: rotate the pairs (2i, 2i+1) of each head by pos * base^(-2i/d)."""
        d = self.head_dim
        theta = pos[:, None] * self.rope_base ** (-np.arange(0, d, 2) / d)  # (T, d/2)
        cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out

    def forward(self, tokens, edits: Optional[Edits] = None, start_pos: int = 0):
        """Float64 forward of a whole sequence. Returns (logits [T, n_vocab], sites) where
        sites[(site, layer)] is [T, width] as read BEFORE that site's edit."""
        edits = edits or {}
        w = {k: v.astype(np.float64) for k, v in self.w.items()}
        tokens = np.asarray(tokens)
        n = len(tokens)
        pos = np.arange(start_pos, start_pos + n, dtype=np.float64)
        causal = np.triu(np.full((n, n), -np.inf), k=1)
        sites: Dict[Tuple[str, int], np.ndarray] = {}

        def site(name: str, il: int, a: np.ndarray) -> np.ndarray:
            sites[(name, il)] = a.copy()
            if (name, il) in edits:
                rows, mask, delta, *add = edits[(name, il)]
                a = a.copy()
                for r in rows:
                    a[r, mask] = a[r, mask] + delta * a[r, mask]
                    if add:
                        a[r] = a[r] + np.asarray(add[0], dtype=np.float64)
            return a

        x = w["token_embd.weight"][tokens]
        hd, group = self.head_dim, self.n_head // self.n_head_kv
        for il in range(self.n_layer):
            p = f"blk.{il}."
            h = self._rms(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).reshape(n, self.n_head, hd)
            k = (h @ w[p + "attn_k.weight"].T).reshape(n, self.n_head_kv, hd)
            v = (h @ w[p + "attn_v.weight"].T).reshape(n, self.n_head_kv, hd)
            q, k = self._rope(q, pos), self._rope(k, pos)
            heads = []
            for hh in range(self.n_head):
                g = hh // group
                s = q[:, hh] @ k[:, g].T / np.sqrt(hd) + causal
                s = np.exp(s - s.max(axis=-1, keepdims=True))
                heads.append((s / s.sum(axis=-1, keepdims=True)) @ v[:, g])
            kqv = site("head", il, np.concatenate(heads, axis=-1))
            x = x + kqv @ w[p + "attn_output.weight"].T
            h = self._rms(x, w[p + "ffn_norm.weight"])
            gate = h @ w[p + "ffn_gate.weight"].T
            act = site("neuron", il, gate / (1.0 + np.exp(-gate)) * (h @ w[p + "ffn_up.weight"].T))
            ffn = site("hidden", il, act @ w[p + "ffn_down.weight"].T)
            x = site("residual", il, x + ffn)
        logits = self._rms(x, w["output_norm.weight"]) @ w["output.weight"].T
        return logits, sites
