"""An in-process rollout engine: a Hugging Face transformers model sampled with a KV cache.

For CPU machines, tests and the demo: the same RolloutEngine verbs as the SGLang engine, no
servers. The model is a Llama/Qwen2-style decoder (RMSNorm, SwiGLU, RoPE, grouped-query
attention, optionally tied embeddings): Qwen2ForCausalLM when the config asks for QKV bias
(Qwen2 hard-codes it), LlamaForCausalLM otherwise -- the parameter names are the same.

Sampling matches what SGLang reports: the log-prob of each sampled token is
log_softmax(logits / T) of the full distribution; top_p only restricts which tokens may be drawn.
A stop token (eos or params.stop_token_ids) ends a response and is part of it.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..hf.config import hf_config
from ..types import Rollout
from .engine import RolloutEngine, RolloutError, SamplingParams, check_complete


def build_hf_model(model_cfg, seed: int = 0, eos_token_id: Optional[int] = None) -> torch.nn.Module:
    """A randomly initialised model (seeded) for ModelConfig, or the checkpoint at model_cfg.hf_path."""
    from transformers import AutoModelForCausalLM

    if model_cfg.hf_path:
        model = AutoModelForCausalLM.from_pretrained(model_cfg.hf_path, dtype=torch.float32)
    else:
        cfg = hf_config(model_cfg, eos_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval()


def top_p_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean mask of the smallest set of most likely tokens whose mass reaches top_p (per row);
    the most likely token is always kept."""
    if top_p >= 1.0:
        return torch.ones_like(probs, dtype=torch.bool)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the strictly more likely tokens
    keep_sorted = before < top_p
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


class InProcessEngine(RolloutEngine):
    def __init__(
        self, model: torch.nn.Module, *, eos_token_ids: Sequence[int] = (), seed: int = 0, max_batch_rows: int = 256
    ):
        self.model = model.eval()
        cfg_eos = getattr(model.config, "eos_token_id", None)
        cfg_eos = [] if cfg_eos is None else ([cfg_eos] if isinstance(cfg_eos, int) else list(cfg_eos))
        self.eos_token_ids = tuple(sorted(set(int(t) for t in (*eos_token_ids, *cfg_eos))))
        self.max_batch_rows = max_batch_rows
        self._generator = torch.Generator().manual_seed(seed)
        self._version: Optional[str] = None

    @classmethod
    def from_config(cls, cfg, eos_token_id: Optional[int] = None) -> "InProcessEngine":
        model = build_hf_model(cfg.model, seed=cfg.train.seed, eos_token_id=eos_token_id)
        return cls(model, eos_token_ids=() if eos_token_id is None else (eos_token_id,), seed=cfg.train.seed)

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Sequence[int]], samples_per_prompt: int, params: SamplingParams
    ) -> List[Rollout]:
        if samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
        limit = self.model.config.max_position_embeddings
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else self._generator
        stop = set(params.stop_token_ids) | set(self.eos_token_ids)
        # Prompts of equal length are sampled together (no padding needed), up to
        # max_batch_rows rows per forward: one batched decode instead of one per prompt.
        by_length: Dict[int, List[int]] = {}
        for p_idx, prompt in enumerate(prompts):
            if not prompt:
                raise RolloutError(f"prompt {p_idx} is empty")
            if len(prompt) + params.max_new_tokens > limit:
                raise RolloutError(
                    f"prompt {p_idx}: {len(prompt)} tokens + max_new_tokens {params.max_new_tokens} "
                    f"exceed the model's {limit} positions"
                )
            by_length.setdefault(len(prompt), []).append(p_idx)
        rollouts: List[Rollout] = []
        for indices in by_length.values():
            jobs = [(p_idx, s) for p_idx in indices for s in range(samples_per_prompt)]
            for lo in range(0, len(jobs), self.max_batch_rows):
                chunk = jobs[lo : lo + self.max_batch_rows]
                ids = torch.tensor([list(prompts[p_idx]) for p_idx, _ in chunk], dtype=torch.long)
                for (p_idx, s), (toks, lps, reason) in zip(chunk, self._sample(ids, params, stop, gen)):
                    rollouts.append(
                        Rollout(
                            prompt_ids=list(prompts[p_idx]),
                            response_ids=toks,
                            logprobs=lps,
                            finish_reason=reason,
                            weight_version=self._version,
                            prompt_index=p_idx,
                            sample_index=s,
                        )
                    )
        rollouts.sort(key=lambda r: (r.prompt_index, r.sample_index))
        check_complete(rollouts, len(prompts), samples_per_prompt)
        return rollouts

    def _sample(self, ids: torch.Tensor, params, stop, gen) -> List[Tuple[List[int], List[float], str]]:
        """Decode a batch of equal-length prompts [rows, P] with a KV cache."""
        from transformers import DynamicCache

        rows = ids.shape[0]
        out = self.model(input_ids=ids, past_key_values=DynamicCache(config=self.model.config), use_cache=True)
        tokens: List[List[int]] = [[] for _ in range(rows)]
        logps: List[List[float]] = [[] for _ in range(rows)]
        reasons = ["length"] * rows
        active = list(range(rows))
        for step in range(params.max_new_tokens):
            logp = torch.log_softmax(out.logits[:, -1, :].float() / params.temperature, dim=-1)
            probs = logp.exp()
            probs = probs * top_p_mask(probs, params.top_p)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            chosen = logp.gather(1, nxt[:, None]).squeeze(1)
            still = []
            for r in active:
                t = int(nxt[r])
                tokens[r].append(t)
                logps[r].append(float(chosen[r]))
                if t in stop:
                    reasons[r] = "stop"
                else:
                    still.append(r)
            active = still
            if not active or step + 1 == params.max_new_tokens:
                break
            # Finished rows keep decoding in the batch (cheaper than reshaping the cache); ignored.
            out = self.model(input_ids=nxt[:, None], past_key_values=out.past_key_values, use_cache=True)
        return list(zip(tokens, logps, reasons))

    # -- weights -------------------------------------------------------------------------------
    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]], version: str) -> None:
        """Copy HF-named tensors into the model, load_state_dict style but for any subset (a sync
        may come in buckets). Every name and shape is checked before anything is copied, so an
        unknown name or a wrong shape raises, naming it, with the model untouched. With tied
        embeddings lm_head.weight may be left out, or must equal the embedding it is tied to."""
        params: Dict[str, torch.Tensor] = dict(self.model.named_parameters())
        tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        embed_name = next((n for n in params if n.endswith("embed_tokens.weight")), None)
        staged: Dict[str, torch.Tensor] = {}
        for name, tensor in named_tensors:
            if name in staged:
                raise ValueError(f"update_weights: {name} given twice")
            staged[name] = tensor
        unknown = [n for n in staged if n not in params and not (tied and n == "lm_head.weight")]
        if unknown:
            raise ValueError(
                f"update_weights: unknown parameter names {unknown[:5]} (model has e.g. {list(params)[:3]})"
            )
        for name, t in staged.items():
            target = params.get(name, params.get(embed_name))
            if tuple(t.shape) != tuple(target.shape):
                raise ValueError(
                    f"update_weights: {name} has shape {tuple(t.shape)}, the model expects {tuple(target.shape)}"
                )
        if tied and "lm_head.weight" in staged:
            head = staged.pop("lm_head.weight")
            if embed_name in staged:
                if not torch.equal(head.to(staged[embed_name].dtype), staged[embed_name]):
                    raise ValueError(
                        "update_weights: tied embeddings, but lm_head.weight differs from "
                        f"{embed_name} (a conversion bug would serve wrong log-probs)"
                    )
            else:
                staged[embed_name] = head
        for name, t in staged.items():
            params[name].copy_(t.to(dtype=params[name].dtype, device=params[name].device))
        self._version = str(version)

    # -- the rest ------------------------------------------------------------------------------
    def health(self) -> bool:
        return True

    @property
    def weight_version(self) -> Optional[str]:
        return self._version


def teacher_forced_logprobs(
    model: torch.nn.Module, prompt: Sequence[int], response: Sequence[int], temperature: float = 1.0
) -> torch.Tensor:
    """log_softmax(logits / T) of each response token given everything before it, in one forward:
    what the trainer computes, to compare with an engine's log-probs."""
    ids = torch.tensor([list(prompt) + list(response)], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    start = len(prompt) - 1
    return logp[start : start + len(response)].gather(1, torch.tensor(list(response))[:, None]).squeeze(1)
