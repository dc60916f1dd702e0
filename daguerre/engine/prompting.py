"""Prompt encoding: a request's prompts -> FLUX.1's two text conditionings (T5 sequence, CLIP pooled).

Plain prompts go through the pipeline's own encode_prompt; weighted ones (daguerre.prompts.weighting's
compel and sdEmbeds syntaxes) through `encode`, with these semantics (documented in docs/api.md):
- T5 sequence: each fragment is tokenized on its own, the tokens concatenated (then EOS and padding,
  as the pipeline does), encoded once, and each token's embedding multiplied by its fragment's
  weight; the result is rescaled so its mean equals the unweighted encoding's (AUTOMATIC1111's
  normalisation), so weights shift emphasis without changing the overall scale. All weights 1
  gives exactly the pipeline's own encoding.
- CLIP pooled vector: one vector for the whole prompt, so per-word weights do not apply to it;
  it encodes the plain text.
- Blend: T5 sequences and pooled vectors averaged with the blend weights.
- Conjunction (.and()): each prompt encoded alone, the T5 sequences (up to their EOS) joined in
  order and scaled by their weights; pooled vectors averaged with the weights.
"""

from __future__ import annotations

import torch

from daguerre.prompts.weighting import Blend, Conjunction, Prompt, Weighted
from daguerre.prompts.weighting import parse as parse_prompt


def encode_prompt(pipe, text: str, syntax: str | None, device, max_seq: int, parameter: str = "positivePrompt"):
    """(T5 sequence, CLIP pooled) embeddings: the pipeline's own encoding, or weighted per `syntax`."""
    with torch.inference_mode():
        if syntax is None or not text:
            pe, ppe, _ = pipe.encode_prompt(
                prompt=text, prompt_2=None, device=device, num_images_per_prompt=1, max_sequence_length=max_seq
            )
            return pe, ppe
        return encode(pipe, parse_prompt(text, syntax, parameter), device=device, max_sequence_length=max_seq)


def encode(pipe, prompt: Prompt, *, device, max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds (1, L, D), pooled_prompt_embeds (1, P)) for the pipeline's transformer."""
    if isinstance(prompt, Weighted):
        seq, _ = _t5(pipe, prompt, device, max_sequence_length)
        return seq, _pooled(pipe, prompt, device)
    parts = [_t5(pipe, p, device, max_sequence_length) for p in prompt.prompts]
    pooled = torch.stack([_pooled(pipe, p, device) for p in prompt.prompts])  # (N, 1, P)
    w = torch.tensor(prompt.weights, dtype=pooled.dtype, device=device)
    pooled = (pooled * w[:, None, None]).sum(0) / w.sum()
    if isinstance(prompt, Blend):
        seqs = torch.stack([s for s, _ in parts])  # (N, 1, L, D)
        return (seqs * w[:, None, None, None]).sum(0) / w.sum(), pooled
    assert isinstance(prompt, Conjunction)
    joined = torch.cat([s[:, :n] * wi for (s, n), wi in zip(parts, prompt.weights, strict=True)], dim=1)
    return joined, pooled


def _t5(pipe, prompt: Weighted, device, max_len: int) -> tuple[torch.Tensor, int]:
    """Weighted T5 embeddings (1, max_len, D) and the number of real tokens (through EOS)."""
    tok = pipe.tokenizer_2
    ids: list[int] = []
    weights: list[float] = []
    for fragment in prompt.fragments:
        piece = tok(fragment.text, add_special_tokens=False).input_ids
        ids += piece
        weights += [fragment.weight] * len(piece)
    ids, weights = ids[: max_len - 1] + [tok.eos_token_id], weights[: max_len - 1] + [1.0]
    n = len(ids)
    ids += [tok.pad_token_id] * (max_len - n)
    weights += [1.0] * (max_len - n)
    with torch.inference_mode():
        emb = pipe.text_encoder_2(torch.tensor([ids], device=device), output_hidden_states=False)[0]  # (1, L, D)
    emb = emb.to(pipe.text_encoder_2.dtype)
    w = torch.tensor(weights, dtype=emb.dtype, device=device)[None, :, None]
    if bool((w == 1).all()):
        return emb, n
    original_mean = emb.mean()
    weighted = emb * w
    return weighted * (original_mean / weighted.mean()), n


def _pooled(pipe, prompt: Weighted, device) -> torch.Tensor:
    return pipe._get_clip_prompt_embeds(prompt=prompt.text, device=device, num_images_per_prompt=1)  # (1, P)
