"""An independent plain-torch re-computation of what the Megatron engine does in one step.

It shares no code with chord_megatron: the model is written out from the architecture (RMSNorm,
RoPE, grouped-query attention with Megatron's per-group QKV packing, SwiGLU) and reads the full
state dict by Megatron names; the CHORD loss is written out from chord-spec.md; Adam with
global-norm clipping is written out from its definition.
"""

from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, base):
    """x [B, S, n, d]; rotate-half RoPE at positions 0..S-1."""
    S, d = x.shape[1], x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = torch.arange(S, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos()[None, :, None], torch.cat([ang, ang], -1).sin()[None, :, None]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def logits(W: Dict[str, torch.Tensor], ids: torch.Tensor, m) -> torch.Tensor:
    """[B, S, V] logits of the full model `W` (Megatron names) for token ids [B, S]."""
    H, heads, G = m.hidden_size, m.num_attention_heads, m.num_query_groups
    d, q = H // heads, heads // G
    B, S = ids.shape
    x = W["embedding.word_embeddings.weight"][ids]
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    for i in range(m.num_layers):
        p = f"decoder.layers.{i}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], m.norm_eps)
        qkv = h @ W[p + "self_attention.linear_qkv.weight"].T
        if m.qkv_bias:
            qkv = qkv + W[p + "self_attention.linear_qkv.bias"]
        qkv = qkv.view(B, S, G, q + 2, d)
        Q = rope(qkv[:, :, :, :q].reshape(B, S, heads, d), m.rotary_base)
        K = rope(qkv[:, :, :, q], m.rotary_base).repeat_interleave(q, dim=2)
        V = qkv[:, :, :, q + 1].repeat_interleave(q, dim=2)
        att = torch.einsum("bshd,bthd->bhst", Q, K) / math.sqrt(d)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        o = torch.einsum("bhst,bthd->bshd", att, V).reshape(B, S, H)
        x = x + o @ W[p + "self_attention.linear_proj.weight"].T
        h = rms_norm(x, W[p + "pre_mlp_layernorm.weight"], m.norm_eps)
        gate, up = (h @ W[p + "mlp.linear_fc1.weight"].T).chunk(2, dim=-1)
        x = x + (F.silu(gate) * up) @ W[p + "mlp.linear_fc2.weight"].T
    x = rms_norm(x, W["decoder.final_layernorm.weight"], m.norm_eps)
    out = W["embedding.word_embeddings.weight"] if m.tie_embeddings else W["output_layer.weight"]
    return x @ out.T


def chord_loss_from_spec(lg, batch, *, mu, temperature, clip_low, clip_high, dual_clip):
    """(1 - mu) * token-mean PPO-clip surrogate (on-policy) + mu * token-mean p(1-p)-weighted
    NLL (expert), each over its own token count, written out from chord-spec.md."""
    logp_all = torch.log_softmax(lg.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, batch.labels.clamp(min=0)[..., None]).squeeze(-1)
    mask = batch.loss_mask.bool()
    rl = mask & ~batch.is_expert[:, None]
    sft = mask & batch.is_expert[:, None]
    old = torch.where(rl, batch.old_logp, torch.zeros_like(logp))
    ratio = torch.exp(torch.where(rl, logp - old, torch.zeros_like(logp)).clamp(-20, 20))
    A = batch.advantages[:, None].expand_as(logp)
    surr = torch.maximum(-A * ratio, -A * ratio.clamp(1 - clip_low, 1 + clip_high))
    if dual_clip is not None:
        surr = torch.where(A < 0, torch.minimum(surr, -A * dual_clip), surr)
    grpo = (surr * rl).sum() / max(int(rl.sum()), 1)
    p = logp.detach().exp()
    sft_loss = (-logp * p * (1 - p) * sft).sum() / max(int(sft.sum()), 1)
    return (1 - mu) * grpo + mu * sft_loss


def loss_and_grads(W, batch, m, **loss_kw):
    """Loss and d loss / d W for every parameter, by autograd through the oracle."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in W.items()}
    loss = chord_loss_from_spec(logits(leaves, batch.input_ids, m), batch, **loss_kw)
    loss.backward()
    return float(loss.detach()), {k: v.grad for k, v in leaves.items()}


def adam_step(W, grads, *, lr, beta1, beta2, eps, max_norm):
    """One Adam update from zero moments, after clipping the global gradient norm."""
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))
    scale = min(1.0, max_norm / (norm + 1e-6))
    out = {}
    for k, w in W.items():
        g = grads[k] * scale
        m_hat = (1 - beta1) * g / (1 - beta1)
        v_hat = (1 - beta2) * g * g / (1 - beta2)
        out[k] = w - lr * m_hat / (v_hat.sqrt() + eps)
    return out, norm
