"""Generation: greedy decoding or sampling with the KV cache (``model.generate``, which also serves PEFT-wrapped
models), several samples per example combined by list filters (self-consistency: a majority vote over the
sampled reasoning paths' answers), and the training loss of generation tasks: cross-entropy over the
target's tokens only."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from promptlab.readout.decoding import SlotDecoder, decodable
from promptlab.readout.model import final_hidden_states, head_of, pad, project, takes_task_ids, task_inputs
from promptlab.vision import pixel_inputs


def generate_readout_of(readout: object) -> GenerateReadout | None:
    """The readout's generation part: itself, a chain-of-thought readout's ``gen``, or None (it only scores)."""
    return readout if isinstance(readout, GenerateReadout) else getattr(readout, "gen", None)


def repeat(values: Sequence, n: int) -> list:
    """Each value ``n`` times in a row: a batch's column for ``n`` samples per example."""
    return [v for v in values for _ in range(n)]


@dataclass(frozen=True)
class Sampling:
    """How each example is decoded: ``samples`` continuations at ``temperature`` (0: greedy, one sample), from
    the full softmax (no top-k or top-p), drawn from a generator seeded with ``seed`` at every evaluation pass."""

    samples: int = 1
    temperature: float = 0.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Generated:
    text: str  # decoded, cut before the first stop string
    num_tokens: int  # tokens the model produced (up to and including EOS or the stop string)


def holds_stop(tokenizer: PreTrainedTokenizerBase, new: Sequence[int], until: Sequence[str], tail: int) -> bool:
    """Whether the text of the last ``tail`` generated tokens holds a stop string. Both decoders check a row at
    every step, so a stop string that was not there a token ago ends in the last one: decoding only the tail keeps
    the check from growing with the row."""
    text = tokenizer.decode(list(new[-tail:]), skip_special_tokens=True)
    return any(s in text for s in until)


class StopOnGeneratedText(StoppingCriteria):
    """Stop a row once its *generated* text contains a stop string (``holds_stop``; ``generate`` keeps a row ended
    once).

    Written here because transformers' ``stop_strings`` also matches text that starts inside the prompt:
    a chat prompt ends with a newline, so a "\n\n" stop string would end generation after one newline.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_len: int, until: Sequence[str], tail: int):
        self.tokenizer, self.prompt_len, self.until, self.tail = tokenizer, prompt_len, until, tail

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        rows = input_ids[:, self.prompt_len:].tolist()
        return torch.tensor([holds_stop(self.tokenizer, row, self.until, self.tail) for row in rows],
                            device=input_ids.device)


class GenerateReadout:
    """Batched decoding (left padding) with stop strings; counts tokens and seconds as costs.

    With ``sampling.samples`` > 1 each example is decoded that many times and ``combine`` (the method's list
    filters over the answers ``answer_of`` reads from each sample, e.g. a majority vote) picks the answer; the
    row keeps every sample (``generations``) and, as ``generation``, the first sample giving that answer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, until: Sequence[str] = (),
                 sampling: Sampling = Sampling(), combine: Callable[[list[str], None], list[str]] | None = None,
                 answer_of: Callable[[str, None], str] | None = None, width: int = 16):
        self.tokenizer, self.until, self.sampling, self.width = tokenizer, list(until), sampling, width
        # the last tokens that can hold a stop string just completed: most tokens give a character or more, a byte-level
        # token part of one, hence twice the longest stop string in tokens, plus a margin
        self.tail = 2 * max((len(s) for s in self.until), default=0) + 8
        self.combine, self.answer_of = combine, answer_of
        sample = ({"do_sample": False} if sampling.greedy else
                  {"do_sample": True, "temperature": sampling.temperature, "top_k": 0, "top_p": 1.0})
        self.config = GenerationConfig(
            max_new_tokens=max_new_tokens, num_beams=1,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **sample,
        )
        self.generated_tokens, self.generation_seconds = 0, 0.0
        self.new_pass()

    def new_pass(self) -> None:
        """Every evaluation pass samples from the same seeded stream (dev and eval each reproducible alone)."""
        self.rng = torch.Generator().manual_seed(self.sampling.seed)

    def next_token(self, logits: torch.Tensor) -> torch.Tensor:
        """The argmax, or a draw from softmax(logits / temperature) with this pass's generator."""
        if self.sampling.greedy:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float().cpu() / self.sampling.temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=self.rng)[:, 0].to(logits.device)

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """Mean cross-entropy of the target tokens given the prompt (prompt tokens are not predicted)."""
        prompts, targets = batch["prompt_ids"], batch["target_ids"]
        head = head_of(model)
        device = head.weight.device
        ids, mask = pad([list(p) + list(t) for p, t in zip(prompts, targets, strict=True)],
                        self.tokenizer.pad_token_id, device)
        images = batch.get("images")
        hidden = final_hidden_states(model, ids, mask, batch.get("task_id"), pixel_inputs(images, device))
        rows = [i for i, t in enumerate(targets) for _ in t]
        cols = [len(p) - 1 + j for p, t in zip(prompts, targets, strict=True) for j in range(len(t))]
        logits = project(head, hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)])
        gold = torch.tensor([tok for t in targets for tok in t], device=device)
        return F.cross_entropy(logits, gold)

    @torch.no_grad()
    def generate(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                 task_ids: Sequence[int] | None = None, images: Sequence[Sequence[dict]] | None = None,
                 repeats: int = 1) -> list[Generated]:
        """Each prompt's continuation (``repeats`` of them, one after another, for sampling); ``images``: each
        row's pixel inputs, for a vision-language model."""
        start = time.perf_counter()
        tasks = {None} if not takes_task_ids(model) else {int(t) for t in task_ids} if task_ids is not None else set()
        if decodable(model) and not images and len(tasks) == 1:  # one soft prompt (or none): decoded in slots
            new = self.decode(model, prompts, repeats, *tasks)
        else:  # prefix tuning, several tasks in one call, images: the model's (or its wrapper's) own generate
            prompts, task_ids, images = (None if v is None else repeat(v, repeats) for v in (prompts, task_ids, images))
            new = []
            for i in range(0, len(prompts), self.width):  # ``width`` rows at a time
                rows = slice(i, i + self.width)
                new += self.with_generate(model, prompts[rows], None if task_ids is None else task_ids[rows],
                                          None if images is None else images[rows])
        self.generation_seconds += time.perf_counter() - start
        results = [self._decode(row) for row in new]
        self.generated_tokens += sum(r.num_tokens for r in results)
        return results

    def with_generate(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]],
                      task_ids: Sequence[int] | None, images: Sequence[Sequence[dict]] | None) -> list[list[int]]:
        """The rows' new tokens from the model's (or its PEFT wrapper's) own ``generate``, left-padded."""
        device = head_of(model).weight.device
        ids, mask = pad(prompts, self.tokenizer.pad_token_id, device, left=True)
        stop = StoppingCriteriaList([StopOnGeneratedText(self.tokenizer, ids.shape[1], self.until, self.tail)]
                                    if self.until else [])
        with torch.random.fork_rng(devices=[]):  # generate() samples from the global generator: seed a copy
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=self.rng)))
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=self.config,
                                 stopping_criteria=stop, **task_inputs(model, task_ids, device),
                                 **pixel_inputs(images, device))
        return [row.tolist() for row in out[:, ids.shape[1]:]]

    def decode(self, model: torch.nn.Module, prompts: Sequence[Sequence[int]], repeats: int = 1,
               task_id: int | None = None) -> list[list[int]]:
        """Continuous batching in ``width`` slots (``readout.decoding``): greedy, token for token what
        ``model.generate`` gives in fp32; a finished row's slot takes the next prompt; a prompt is read once for
        its ``repeats`` samples, and the prefix all prompts share once for the call. Each next token comes from
        fp32 logits under bf16 autocast (``project``)."""
        decoder = SlotDecoder(model, self.tokenizer.pad_token_id, self.width, self.next_token, self._finished,
                              task_id=task_id)
        return decoder.run(prompts, repeats)

    def _finished(self, new: list[int]) -> bool:
        """EOS, the token budget, or a stop string in the text of the last tokens (``holds_stop``)."""
        if new[-1] == self.tokenizer.eos_token_id or len(new) >= self.config.max_new_tokens:
            return True
        return bool(self.until) and holds_stop(self.tokenizer, new, self.until, self.tail)

    def _decode(self, new: list[int]) -> Generated:
        eos, pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        n = next((i + 1 for i, t in enumerate(new) if t == eos), len(new))
        while n > 0 and new[n - 1] == pad_id != eos:  # finished early on a stop string: the rest is padding
            n -= 1
        text = self.tokenizer.decode(new[:n], skip_special_tokens=True)
        cut = min((text.find(s) for s in self.until if s in text), default=len(text))
        return Generated(text[:cut].strip(), n)

    def samples(self, model: torch.nn.Module, batch: dict) -> list[list[Generated]]:
        """``sampling.samples`` continuations of each row's prompt, the samples of a row one after another."""
        n = self.sampling.samples
        rows = range(len(batch["prompt_ids"]))
        gens = self.generate(model, batch["prompt_ids"], batch.get("task_id"), batch.get("images"), repeats=n)
        return [gens[i * n:(i + 1) * n] for i in rows]

    def chosen(self, answers: list[str]) -> int:
        """Which sample stands for the row: the first whose answer is the combined answer (0 without samples)."""
        if self.combine is None or len(answers) == 1:
            return 0
        combined = self.combine(answers, None)
        return answers.index(combined[0]) if combined and combined[0] in answers else 0

    def predict(self, model: torch.nn.Module, batch: dict) -> list[dict]:
        out = []
        for i, refs, gens in zip(batch["idx"], batch["references"], self.samples(model, batch), strict=True):
            texts = [g.text for g in gens]
            answers = texts if len(texts) == 1 or not self.answer_of else [self.answer_of(t, None) for t in texts]
            pick = self.chosen(answers)  # one sample (greedy): 0, nothing filtered twice
            row = {"idx": int(i), "generation": texts[pick], "references": refs,
                   "generated_tokens": sum(g.num_tokens for g in gens)}
            out.append(row if len(gens) == 1 else {**row, "generations": texts})
        return out
