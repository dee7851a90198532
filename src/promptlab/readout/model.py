"""What every readout needs from a (plain or PEFT-wrapped) causal LM: final hidden states, padding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

NO_LOGITS = torch.empty(0, dtype=torch.long)  # logits_to_keep=[] makes the LM head compute nothing


def final_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last-layer (post-norm) hidden states, shape (batch, len, hidden), for plain and PEFT-wrapped models.

    The LM head is skipped: callers project only the positions they need (the vocabulary projection of
    every position is the largest tensor of a forward pass).
    """
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
        logits_to_keep=NO_LOGITS.to(input_ids.device), use_cache=False,
    )
    # Prompt tuning prepends virtual tokens: keep the positions of the real input, which come last.
    return out.hidden_states[-1][:, -input_ids.shape[1]:]


def pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device,
        left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists into (input_ids, attention_mask); right padding unless ``left``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, span] = torch.tensor(s, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def head_of(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_output_embeddings()
