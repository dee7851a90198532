"""Rank scoring: an example's score for answer c is the log-likelihood of c's tokens after the prompt (summed
over its tokens, as lm-evaluation-harness's ``loglikelihood``), normalised over that example's answers. The
same scores train (cross-entropy) and predict (argmax). Predictions keep each answer's summed log-likelihood
with its token, character and byte counts, so every readout (``evaluation.readouts``: length-normalised,
calibrated) can be computed, and recomputed from ``predictions.jsonl``.

The backbone runs without its LM head; we project only the hidden states that predict answer tokens.
When every example shares the same single-token answers (a verbalizer such as negative/positive), training
uses only those rows of the output matrix: log p(y_c) - log sum_c' p(y_c') does not depend on the
vocabulary normaliser, so this equals the class-normalised full-vocabulary score exactly; inference also
takes the full-vocabulary normaliser at that one position, for the answers' true log-likelihoods. Otherwise
(multi-token answers, per-example answers such as COPA's sentences) each (example, answer) pair is one
sequence, scored with the full-vocabulary log-softmax at the answer positions only.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from promptlab.readout.model import NO_LOGITS, PrefixCache, head_of, pad, project, run_keeping_last_hidden
from promptlab.vision import pixel_inputs


class ChoiceReadout:
    """Scores ``prompt_ids`` against each example's ``choice_ids``; batches come from ``PromptDataModule``."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.prefix = PrefixCache()  # inference: the batch's shared prompt prefix runs once

    def new_pass(self) -> None:
        """An evaluation pass starts: a prefix cached before (by other weights, another precision) is dropped."""
        self.prefix.clear()

    def scores(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]],
               choices: Sequence[Sequence[Sequence[int]]], task_ids: Sequence[int] | None = None,
               images: Sequence[Sequence[dict]] | None = None, full: bool = True) -> torch.Tensor:
        """(batch, max answers) summed log-likelihoods of each example's answers; -inf pads shorter lists.
        ``full=False`` (training) may leave out a per-row constant (the vocabulary normaliser of single-token
        answers): normalised over the answers, both are the same. ``task_ids``: each row's task, for a model
        serving several (``readout.model.takes_task_ids``); ``images``: each row's images (pixel inputs, in
        prompt order), for a vision-language model."""
        shared = all(list(c) == list(choices[0]) for c in choices)
        if shared and all(len(t) == 1 for t in choices[0]):
            return self._single_token(model, prompts, [t[0] for t in choices[0]], task_ids, images, full)
        return self._sequences(model, prompts, choices, task_ids, images)

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        scores = self.scores(model, batch["prompt_ids"], batch["choice_ids"], batch.get("task_id"), batch.get("images"),
                             full=False)
        return F.cross_entropy(scores, batch["labels"])

    def predict(self, model: torch.nn.Module, batch: dict) -> list[dict]:
        sums = self.scores(model, batch["prompt_ids"], batch["choice_ids"], batch.get("task_id"),
                           batch.get("images")).float().cpu()
        return [choice_row(i, y, s[: len(c)], c, texts)
                for i, y, s, c, texts in zip(batch["idx"], batch["labels"], sums, batch["choice_ids"],
                                             batch["choices"], strict=True)]

    def _single_token(self, model, prompts, token_rows: list[int], task_ids, images, full: bool) -> torch.Tensor:
        head = head_of(model)
        device = head.weight.device
        run = self.prefix.hidden_states(model, prompts, self.pad_id, device, min(map(len, prompts)) - 1, task_ids,
                                        images=pixel_inputs(images, device))
        last = torch.tensor([len(p) - 1 - run.shared for p in prompts], device=device)
        answer = run.states[torch.arange(len(prompts), device=device), last]  # (B, H)
        rows = torch.tensor(token_rows, device=device)
        if full:  # one position per example: the whole vocabulary's normaliser costs little
            return project(head, answer).log_softmax(-1)[:, rows]
        return project(head, answer, rows)  # (B, C): the only projection

    def _sequences(self, model, prompts, choices, task_ids, images) -> torch.Tensor:
        if self.prefix.reuses(model):
            return self._prompt_once(model, prompts, choices, images)
        head = head_of(model)
        device = head.weight.device
        pairs = [(i, c) for i, cs in enumerate(choices) for c in range(len(cs))]
        sequences = [list(prompts[i]) + list(choices[i][c]) for i, c in pairs]
        pair_tasks = None if task_ids is None else [task_ids[i] for i, _ in pairs]
        pixels = pixel_inputs(images and [images[i] for i, _ in pairs], device)
        run = self.prefix.hidden_states(model, sequences, self.pad_id, device, min(map(len, prompts)) - 1, pair_tasks,
                                        images=pixels)
        hidden, shared = run.states, run.shared
        seq, pos, targets = [], [], []
        for s, (i, c) in enumerate(pairs):
            for j, tok in enumerate(choices[i][c]):
                seq.append(s)
                pos.append(len(prompts[i]) - 1 + j - shared)  # the position that predicts answer token j
                targets.append(tok)
        seq_t = torch.tensor(seq, device=device)
        token_logp = project(head, hidden[seq_t, torch.tensor(pos, device=device)]).log_softmax(-1)
        token_logp = token_logp.gather(1, torch.tensor(targets, device=device)[:, None]).squeeze(1)
        seq_logp = torch.zeros(len(pairs), device=device).index_add(0, seq_t, token_logp)
        width = max(len(cs) for cs in choices)
        out = torch.full((len(choices), width), -torch.inf, device=device)
        out[[i for i, _ in pairs], [c for _, c in pairs]] = seq_logp
        return out


    def _prompt_once(self, model, prompts, choices, images=None) -> torch.Tensor:
        """Inference: each prompt runs once and keeps its key/value cache; the answers continue it, one forward per
        answer slot over the examples that have one, instead of a whole (prompt + answer) sequence per pair. The
        prompt's last hidden state scores every answer's first token. With images, the vision tower too runs once
        per example rather than once per answer."""
        head = head_of(model)
        device = head.weight.device
        run = self.prefix.hidden_states(model, prompts, self.pad_id, device, min(map(len, prompts)) - 1, keep_cache=True,
                                        images=pixel_inputs(images, device))
        last = torch.tensor([len(p) - 1 - run.shared for p in prompts], device=device)
        first = project(head, run.states[torch.arange(len(prompts), device=device), last]).log_softmax(-1)  # (B, V)
        width = max(len(cs) for cs in choices)
        out = torch.full((len(choices), width), -torch.inf, device=device)
        for c in range(width):
            rows = [i for i, cs in enumerate(choices) if len(cs) > c]
            answers = [list(choices[i][c]) for i in rows]
            logp = first[rows, [a[0] for a in answers]]
            if max(map(len, answers)) > 1:  # tokens 0..n-2 go in, predicting tokens 1..n-1
                index = torch.tensor(rows, device=device)
                cache = copy.deepcopy(run.cache)
                cache.batch_select_indices(index)  # one copy at a time: memory stays ~2x the prompts' cache
                ids, mask = pad([a[:-1] for a in answers], self.pad_id, device)
                positions = torch.tensor([len(prompts[i]) for i in rows], device=device)[:, None] + torch.arange(
                    ids.shape[1], device=device)
                _, hidden = run_keeping_last_hidden(
                    model, input_ids=ids, attention_mask=torch.cat([run.mask[index], mask], dim=1),
                    position_ids=positions, past_key_values=cache, logits_to_keep=NO_LOGITS.to(device), use_cache=True)
                seq, pos, targets = (torch.tensor(x, device=device) for x in zip(
                    *[(k, j, a[j + 1]) for k, a in enumerate(answers) for j in range(len(a) - 1)], strict=True))
                token_logp = project(head, hidden[seq, pos]).log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
                logp = logp.index_add(0, seq, token_logp)
            out[rows, c] = logp
        return out


def choice_row(idx, label, sums: torch.Tensor, choice_ids: Sequence[Sequence[int]], texts: Sequence[str]) -> dict:
    """A choice prediction: the answer log-likelihoods normalised over the answers (``log_probs``), the summed
    ones (``answer_logprobs``, lm-evaluation-harness's ``loglikelihood``) and each answer's length in tokens,
    characters and bytes (its text as the task lists it; the harness's ``acc_norm`` divides by characters,
    ``acc_bytes`` by UTF-8 bytes). Non-finite values are kept as NaN here; the run record turns them into a
    status (``diverged``)."""
    return {"idx": int(idx), "label": int(label), "pred": int(sums.argmax()),
            "log_probs": [round(float(v), 5) for v in sums.log_softmax(-1)],
            "answer_logprobs": [round(float(v), 5) for v in sums],
            "answer_tokens": [len(c) for c in choice_ids], "answer_chars": [len(t) for t in texts],
            "answer_bytes": [len(t.encode("utf-8")) for t in texts]}


def brute_force_scores(model: torch.nn.Module, prompts, choices) -> torch.Tensor:
    """Reference for tests: full-vocabulary logits at every position, one unpadded sequence at a time; each
    example's summed answer log-likelihoods."""
    out = []
    for p, cs in zip(prompts, choices, strict=True):
        per_choice = []
        for lab in cs:
            logp = model(input_ids=torch.tensor([list(p) + list(lab)])).logits[0].float().log_softmax(-1)
            per_choice.append(sum(logp[len(p) - 1 + j, tok] for j, tok in enumerate(lab)))
        out.append(torch.stack(per_choice))
    return torch.stack(out)
