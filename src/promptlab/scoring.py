"""Class scores by rank scoring over the verbalizer; the same code serves training and evaluation.

An example's score for class c is the log-likelihood of c's label word(s) after the prompt, normalised
over the classes. The backbone runs without its LM head (``logits_to_keep`` empty); we project only the
final hidden states that predict label tokens. With single-token label words only the label rows of the
output matrix are used, which gives exactly the class-normalised full-vocabulary scores, since
log p(y_c) - log sum_c' p(y_c') does not depend on the vocabulary normaliser. Multi-token words are
scored over all their tokens with the full-vocabulary log-softmax, but only at the answer positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NO_LOGITS = torch.empty(0, dtype=torch.long)  # logits_to_keep=[] makes the LM head compute nothing


def final_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last-layer (post-norm) hidden states, shape (batch, len, hidden), for plain and PEFT-wrapped models."""
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
        logits_to_keep=NO_LOGITS.to(input_ids.device), use_cache=False,
    )
    # Prompt tuning prepends virtual tokens: keep the positions of the real input, which come last.
    return out.hidden_states[-1][:, -input_ids.shape[1]:]


def pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


class LabelScorer:
    """Scores prompts against a fixed verbalizer; returns class log-probabilities (batch, classes)."""

    def __init__(self, label_token_ids: Sequence[Sequence[int]], pad_id: int):
        self.label_token_ids = [list(t) for t in label_token_ids]
        self.pad_id = pad_id
        self.single_token = all(len(t) == 1 for t in self.label_token_ids)

    def __call__(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        head = model.get_output_embeddings()
        device = head.weight.device
        if self.single_token:
            return self._single(model, head, prompts, device)
        return self._multi(model, head, prompts, device)

    def _single(self, model, head, prompts, device) -> torch.Tensor:
        ids, mask = pad(prompts, self.pad_id, device)
        hidden = final_hidden_states(model, ids, mask)
        last = torch.tensor([len(p) - 1 for p in prompts], device=device)
        answer = hidden[torch.arange(len(prompts), device=device), last]  # (B, H)
        rows = torch.tensor([t[0] for t in self.label_token_ids], device=device)
        logits = answer @ head.weight[rows].T  # (B, C): the only projection computed
        if head.bias is not None:
            logits = logits + head.bias[rows]
        return logits.float().log_softmax(-1)

    def _multi(self, model, head, prompts, device) -> torch.Tensor:
        # One sequence per (example, class): prompt followed by that class's label tokens.
        n_cls = len(self.label_token_ids)
        seqs = [list(p) + lab for p in prompts for lab in self.label_token_ids]
        ids, mask = pad(seqs, self.pad_id, device)
        hidden = final_hidden_states(model, ids, mask)
        rows, cols, targets = [], [], []
        for i, p in enumerate(prompts):
            for c, lab in enumerate(self.label_token_ids):
                s = i * n_cls + c
                for j, tok in enumerate(lab):
                    rows.append(s)
                    cols.append(len(p) - 1 + j)  # the position that predicts label token j
                    targets.append(tok)
        answer = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
        token_logp = head(answer).float().log_softmax(-1)  # full vocabulary, answer positions only
        token_logp = token_logp.gather(1, torch.tensor(targets, device=device)[:, None]).squeeze(1)
        seq_logp = torch.zeros(len(seqs), device=device).index_add(0, torch.tensor(rows, device=device), token_logp)
        return seq_logp.view(len(prompts), n_cls).log_softmax(-1)


def brute_force_scores(model: torch.nn.Module, prompts, label_token_ids, pad_id: int) -> torch.Tensor:
    """Reference: full-vocabulary logits at every position, one unpadded sequence at a time (tests only)."""
    out = []
    for p in prompts:
        per_class = []
        for lab in label_token_ids:
            ids = torch.tensor([list(p) + list(lab)])
            logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
            per_class.append(sum(logp[len(p) - 1 + j, tok] for j, tok in enumerate(lab)))
        out.append(torch.stack(per_class).log_softmax(-1))
    return torch.stack(out)
