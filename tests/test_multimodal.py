"""Image tasks on the tiny random vision-language model (Idefics3, SmolVLM's architecture) and the tiny CLIP: every
method trains only its own weights and reloads to the same predictions, prompts render through the processor's
chat template, batched image scores equal per-row ones, CoOp learns the synthetic colour task, and bad input is
one clear message before the model loads."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from conftest import assert_only_trainable_changed, compose_config, read_predictions, write_jsonl

import promptlab.run
from promptlab import eval as eval_cli
from promptlab.errors import ConfigError
from promptlab.methods import build_method
from promptlab.models import load_backbone
from promptlab.module import PromptModule
from promptlab.prompts import build_messages, encode_multimodal, render_content
from promptlab.readout import ChoiceReadout
from promptlab.run import plan
from promptlab.tasks import TaskSpec, load_task
from promptlab.tasks.shapes import make
from promptlab.vision import ImageBlocks, pixel_inputs


@pytest.fixture
def image_root(tmp_path):
    make(tmp_path / "data" / "colours", train=32, validation=8, size=32)
    return tmp_path / "data"


@pytest.fixture
def mm_cfg(tmp_path, image_root):
    """A fast config on the synthetic colours task: ``mm_cfg("vlm", "prompt_tuning", "method.lr=0.1")``."""

    def _make(kind: str, method: str, *overrides: str, data: str = "colours"):
        base = [f"model=tiny_random_{kind}", f"method={method}", f"data={data}", f"paths.data_root={image_root}",
                f"paths.cache_dir={tmp_path / 'cache'}", "logger=none", "eval_batch_size=4", "data.dev_size=8"]
        base.append("data.k_shot=2" if data == "colours" else "data.train_size=8")
        if build_method(compose_config([f"method={method}"]).method).trains:
            base += ["method.max_steps=2", "method.batch_size=4"]
        return compose_config([*base, *overrides])

    return _make


@pytest.fixture
def captured(monkeypatch):
    """The model each run trains, with a copy of every weight as it was before training."""
    seen = {}
    real = PromptModule.__init__

    def spy(self, model, readout, optim=None):
        seen["model"], seen["before"] = model, {n: p.detach().clone() for n, p in model.named_parameters()}
        real(self, model, readout, optim)

    monkeypatch.setattr(PromptModule, "__init__", spy)
    return seen


TRAINED = [("vlm", "prompt_tuning"), ("vlm", "lora"), ("vlm", "ia3"), ("vlm", "full_finetune"), ("clip", "coop"),
           ("clip", "linear_probe")]


@pytest.mark.parametrize(("kind", "method"), TRAINED)
def test_multimodal_method_trains_only_its_own_weights_and_reloads(mm_cfg, captured, run_dir, kind, method):
    cfg = mm_cfg(kind, method, "method.lr=0.05" if method in ("coop", "linear_probe") else "method.max_steps=2")
    result = promptlab.run.run(cfg, run_dir)
    assert result["status"] == "completed", result.get("error")
    model, before = captured["model"], captured["before"]
    trainable = assert_only_trainable_changed(model, before)
    costs = result["costs"]
    assert costs["trainable_params"] == sum(model.get_parameter(n).numel() for n in trainable)
    assert costs["stored_params"] == costs["trainable_params"] and costs["checkpoint_bytes"] > 0  # what trained

    record, out = eval_cli.run_eval(run_dir, [])  # a fresh backbone + the stored weights
    assert record["status"] == "completed"
    again = sorted((r["idx"], r["log_probs"]) for r in read_predictions(out))
    assert again == sorted((r["idx"], r["log_probs"]) for r in read_predictions(run_dir))


@pytest.mark.parametrize(("kind", "method"), [("vlm", "zero_shot"), ("vlm", "few_shot"), ("clip", "clip_zero_shot")])
def test_prompting_rows_on_images(mm_cfg, run_dir, kind, method):
    result = promptlab.run.run(mm_cfg(kind, method), run_dir)
    assert result["status"] == "completed", result.get("error")
    assert result["costs"]["trainable_params"] == 0 and result["costs"]["stored_params"] == 0
    rows = read_predictions(run_dir)
    assert len(rows) == 8 and all(len(r["log_probs"]) == 4 for r in rows)


@pytest.mark.parametrize(("data", "method"), [("shape_captions", "zero_shot"), ("shape_captions", "prompt_tuning"),
                                             ("shape_vqa", "few_shot")])
def test_captions_and_answers_are_generated_from_images(mm_cfg, run_dir, data, method):
    result = promptlab.run.run(mm_cfg("vlm", method, data=data), run_dir)
    assert result["status"] == "completed", result.get("error")
    rows = read_predictions(run_dir)
    assert len(rows) == 8 and all("generation" in r for r in rows)
    assert {r["references"][0].split()[-1] for r in rows} <= {"circle", "square", "triangle"}
    assert result["costs"]["generated_tokens"] > 0


def test_few_shot_prompt_renders_through_the_processors_chat_template(tmp_path, image_root):
    """The prompt's tokens and pixels are what the processor makes of the chat template's text, demonstrations'
    images interleaved; answers start as the template writes them ("Assistant: red")."""
    cfg = compose_config(["model=tiny_random_vlm", "data=colours", "method=few_shot", "method.num_demos=2"])
    spec = TaskSpec.from_config(cfg.data)
    task = load_task(spec, str(image_root))
    backbone = load_backbone(cfg.model, tmp_path / "cache")
    method = build_method(cfg.method)
    demos = [method.demo(spec, r) for r in task.train[:2]]
    row = task.eval[0]
    item = method.encoder(backbone, spec, demos).item(row, train=False)

    messages = build_messages(render_content(spec.prompt_template, row, "image"), demos, spec.system_prompt)
    processor = backbone.processor
    typed = [{**m, "content": [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]}
             for m in messages]
    text = processor.apply_chat_template(typed, add_generation_prompt=True)
    images = [p["image"] for m in typed for p in m["content"] if p["type"] == "image"]
    from promptlab.vision import open_image

    reference = processor(text=text, images=[[open_image(i) for i in images]], return_tensors="pt")
    assert item["prompt_ids"] == reference["input_ids"][0].tolist()
    assert text.count("<image>") == len(item["images"]) == 3  # two demonstrations' images, then the query's
    pixels = pixel_inputs([item["images"]], torch.device("cpu"))
    assert torch.equal(pixels["pixel_values"], reference["pixel_values"])
    tok = backbone.tokenizer
    assert "Assistant: red" in tok.decode(item["prompt_ids"]) or "Assistant: green" in tok.decode(item["prompt_ids"])
    assert tok.decode(item["choice_ids"][0]) == " red"  # "Assistant:" + " red", as the template writes answers
    ids, _ = encode_multimodal(tok, ImageBlocks(processor), messages)
    assert ids == item["prompt_ids"]


def test_batched_image_scores_equal_scores_one_row_at_a_time(tmp_path, image_root):
    """Rows with different numbers of images in one batch: the padding images change nothing."""
    cfg = compose_config(["model=tiny_random_vlm", "data=colours", "method=few_shot", "method.num_demos=1"])
    spec = TaskSpec.from_config(cfg.data)
    task = load_task(spec, str(image_root))
    backbone = load_backbone(cfg.model, tmp_path / "cache")
    method = build_method(cfg.method)
    zero = method.encoder(backbone, spec, [])
    one = method.encoder(backbone, spec, [method.demo(spec, task.train[0])])
    items = [zero.item(task.eval[0], False), one.item(task.eval[1], False), zero.item(task.eval[2], False)]
    assert [len(x["images"]) for x in items] == [1, 2, 1]
    readout, model = ChoiceReadout(backbone.tokenizer.pad_token_id), backbone.model.eval()

    def scores(xs):
        return readout.scores(model, [x["prompt_ids"] for x in xs], [x["choice_ids"] for x in xs], None,
                              [x["images"] for x in xs])

    with torch.no_grad():
        batched = scores(items)
        alone = torch.cat([scores([x]) for x in items])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_coop_beats_chance_on_the_colour_task(tmp_path, run_dir):
    make(tmp_path / "d" / "colours", train=64, validation=32, size=64)
    cfg = compose_config(["model=tiny_random_clip", "method=coop", "data=colours", f"paths.data_root={tmp_path / 'd'}",
                          f"paths.cache_dir={tmp_path / 'cache'}", "logger=none", "method.context=''",
                          "method.n_ctx=16", "method.lr=0.01", "method.max_steps=100"])
    result = promptlab.run.run(cfg, run_dir)
    assert result["status"] == "completed", result.get("error")
    assert result["metrics"]["accuracy"] >= 0.4  # chance: 0.25 (4 colours); 32 examples


@pytest.mark.parametrize(("kind", "method", "extra", "match"), [
    ("lm", "zero_shot", [], "text-only"),
    ("vlm", "coop", [], "does not work with a model.kind=vlm"),
    ("clip", "zero_shot", [], "does not work with a model.kind=clip"),
    ("clip", "coop", ["data=sst2"], "classifies images"),
    ("vlm", "zero_shot", ["data.image_column=picture"], "does not show the image"),
    ("vlm", "zero_shot", ["search=templates"], "not supported for image tasks"),
    ("vlm", "zero_shot_cot", [], "not supported yet"),
    ("vlm", "zero_shot", ["model.kind=banana"], "model.kind=.banana. is not one of lm, vlm, clip"),
])
def test_bad_multimodal_configs_are_one_message_before_the_model_loads(image_root, kind, method, extra, match):
    overrides = [o for o in extra if not o.startswith("data=")]
    data = next((o.split("=")[1] for o in extra if o.startswith("data=")), "colours")
    model = "tiny_random" if kind == "lm" else f"tiny_random_{kind}"
    cfg = compose_config([f"model={model}", f"method={method}", f"data={data}", "logger=none",
                          f"paths.data_root={image_root}", *overrides])
    with pytest.raises(ConfigError, match=match):
        plan(cfg)


@pytest.mark.parametrize(("value", "write"), [("missing.png", None), ("notes.png", b"not an image")])
def test_unreadable_images_are_named_before_the_model_loads(mm_cfg, image_root, value, write):
    folder = image_root / "colours"
    if write:
        (folder / value).write_bytes(write)
    rows = [json.loads(line) for line in (folder / "validation.jsonl").read_text().splitlines()]
    rows[3]["image"] = value
    write_jsonl(folder / "validation.jsonl", rows)
    with pytest.raises(ConfigError, match="validation row 3: column 'image' is not a readable image"):
        plan(mm_cfg("vlm", "zero_shot"))


def test_a_missing_image_column_is_named(mm_cfg, image_root):
    folder = image_root / "colours"
    rows = [{k: v for k, v in json.loads(line).items() if k != "image"}
            for line in (folder / "train.jsonl").read_text().splitlines()]
    write_jsonl(folder / "train.jsonl", rows)
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['image'\]"):
        plan(mm_cfg("clip", "coop"))


def test_an_image_the_processor_rejects_is_one_message(tmp_path, image_root):
    broken = tmp_path / "broken.png"
    broken.write_bytes((image_root / "colours" / "images" / "train_0000.png").read_bytes()[:60])  # header only
    backbone = load_backbone(compose_config(["model=tiny_random_vlm"]).model, tmp_path / "cache")
    with pytest.raises(ConfigError, match="rejects the image"):
        ImageBlocks(backbone.processor).block(str(broken))


def test_real_vlms_offline_fail_fast_naming_the_offline_models(tmp_path):
    cfg = compose_config(["model=smolvlm_256m"]).model
    with pytest.raises(ConfigError, match="not in the local Hugging Face cache") as err:
        load_backbone(cfg, tmp_path / "cache")
    assert "tiny_random_vlm" in err.value.fix


def test_the_image_reaches_the_model(tmp_path, image_root):
    """Two rows with the same prompt text and different images get different scores (and the same image, the same)."""
    cfg = compose_config(["model=tiny_random_vlm", "data=colours", "method=zero_shot"])
    spec = TaskSpec.from_config(cfg.data)
    task = load_task(spec, str(image_root))
    backbone = load_backbone(cfg.model, tmp_path / "cache")
    encoder = build_method(cfg.method).encoder(backbone, spec, [])
    a, b = (encoder.item(r, False) for r in task.eval[:2])
    assert a["prompt_ids"] == b["prompt_ids"] and a["images"] is not b["images"]
    readout = ChoiceReadout(backbone.tokenizer.pad_token_id)
    with torch.no_grad():
        s = readout.scores(backbone.model.eval(), [a["prompt_ids"]] * 3, [a["choice_ids"]] * 3, None,
                           [a["images"], b["images"], a["images"]])
    assert not torch.allclose(s[0], s[1]) and torch.allclose(s[0], s[2])


def test_the_report_shows_multimodal_rows_like_any_other(mm_cfg, tmp_path):
    """CLIP and VLM rows on one image task: one table, a Model column to tell the backbones apart, their costs."""
    from promptlab.report import write_report

    for kind, method in [("clip", "clip_zero_shot"), ("clip", "linear_probe"), ("vlm", "zero_shot")]:
        assert promptlab.run.run(mm_cfg(kind, method), tmp_path / "runs" / method)["status"] == "completed"
    write_report(tmp_path / "runs", tmp_path / "report")
    table = (tmp_path / "report" / "table.md").read_text()
    for text in ("CLIP zero-shot", "Linear probe", "Zero-shot", "tiny_random_clip", "tiny_random_vlm", "| Model"):
        assert text in table
    assert (tmp_path / "report" / "index.html").is_file()


def test_an_imagefolder_split_is_read_with_its_class_folders(tmp_path, mm_cfg, image_root):
    """<split>/<class>/<image>: datasets' imagefolder builder; labels are the class folders in name order."""
    import shutil

    folder = image_root / "colours"
    names = ["blue", "green", "red", "yellow"]  # sorted folder names: the label ids
    for split in ("train", "validation"):
        for line in (folder / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            colour = row["caption"].split()[1]
            (folder / split / colour).mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / row["image"], folder / split / colour / f"{row['idx']}.png")
        (folder / f"{split}.jsonl").unlink()
    cfg = mm_cfg("clip", "clip_zero_shot", f"data.choices=[{','.join(names)}]")
    p = plan(cfg)
    assert len(p.task.eval) == 8 and {r["label"] for r in p.task.eval} == {0, 1, 2, 3}
    for row in p.task.eval:
        assert f"/{names[row['label']]}/" in row["image"]["path"]
    assert p.task.sources["validation"].startswith("validation sha256:")


def test_text_tasks_on_a_vlm_go_through_its_chat_template(tmp_path, data_root):
    cfg = compose_config(["model=tiny_random_vlm", "data=sst2", "method=zero_shot", "data.dev_size=8"])
    spec = TaskSpec.from_config(cfg.data)
    backbone = load_backbone(cfg.model, tmp_path / "cache")
    item = build_method(cfg.method).encoder(backbone, spec, []).item(load_task(spec, str(data_root)).eval[0], False)
    text = backbone.tokenizer.decode(item["prompt_ids"])
    assert text.startswith("<|im_start|>System: ") and text.endswith("<end_of_utterance>\nAssistant:")
    assert "images" not in item and backbone.tokenizer.decode(item["choice_ids"][0]) == " negative"


def test_image_prompts_run_once_for_all_their_answers(tmp_path, image_root):
    """Inference scores each image prompt once and continues its cache per answer (multi-token colour words under
    the tiny tokenizer): the same scores as one whole (prompt + answer) sequence per pair."""
    cfg = compose_config(["model=tiny_random_vlm", "data=colours", "method=few_shot", "method.num_demos=1"])
    spec = TaskSpec.from_config(cfg.data)
    task = load_task(spec, str(image_root))
    backbone = load_backbone(cfg.model, tmp_path / "cache")
    method = build_method(cfg.method)
    encoder = method.encoder(backbone, spec, [method.demo(spec, task.train[0])])
    items = [encoder.item(r, False) for r in task.eval[:4]]
    assert max(len(c) for c in items[0]["choice_ids"]) > 1
    readout, model = ChoiceReadout(backbone.tokenizer.pad_token_id), backbone.model.eval()
    args = ([x["prompt_ids"] for x in items], [x["choice_ids"] for x in items], None, [x["images"] for x in items])
    calls = []
    vision = model.model.vision_model
    handle = vision.register_forward_hook(lambda m, a, out: calls.append(out.last_hidden_state.shape[0]))
    with torch.no_grad():
        once = readout.scores(model, *args)
        readout.prefix.enabled = False  # whole sequences, one per (example, answer)
        whole = readout.scores(model, *args)
    handle.remove()
    torch.testing.assert_close(once, whole, atol=1e-5, rtol=1e-5)
    # the demonstration's image once (the shared prefix), then the 4 rows' own; then 4 rows x 2 images per answer
    assert calls == [1, 4, 32]


def colour_encoders(image_root, cache_dir):
    """(task, backbone, the few-shot encoder of the given training rows as demonstrations) on the tiny VLM."""
    cfg = compose_config(["model=tiny_random_vlm", "data=colours", "method=few_shot"])
    spec = TaskSpec.from_config(cfg.data)
    task = load_task(spec, str(image_root))
    backbone = load_backbone(cfg.model, cache_dir)
    method = build_method(cfg.method)
    return task, backbone, lambda *rows: method.encoder(backbone, spec, [method.demo(spec, r) for r in rows])


def count_images(model) -> tuple[list[int], object]:
    """(the number of images each vision-tower call sees, the hook's handle)."""
    calls: list[int] = []
    handle = model.model.vision_model.register_forward_hook(lambda m, a, out: calls.append(out.last_hidden_state.shape[0]))
    return calls, handle


def cached_and_whole(backbone) -> tuple[ChoiceReadout, ChoiceReadout, Callable]:
    """Two readouts of the model, with and without the prefix cache, and ``scores(readout, items)``: the items'
    answer scores with their images."""
    cached, whole = ChoiceReadout(backbone.tokenizer.pad_token_id), ChoiceReadout(backbone.tokenizer.pad_token_id)
    whole.prefix.enabled = False

    def scores(readout: ChoiceReadout, items: list[dict]) -> torch.Tensor:
        return readout.scores(backbone.model, [x["prompt_ids"] for x in items], [x["choice_ids"] for x in items],
                              None, [x["images"] for x in items])

    return cached, whole, scores


@pytest.mark.parametrize("answers", ["colour words", "single tokens"])
def test_image_demonstrations_run_once_for_all_rows_and_batches(tmp_path, image_root, answers):
    """Few-shot prompts with image demonstrations: the shared prefix, demonstrations' images included, runs once
    for every row of every batch; each row runs only its own image. Scores equal whole sequences' (fp32)."""
    task, backbone, encoder_of = colour_encoders(image_root, tmp_path / "cache")
    encoder = encoder_of(*task.train[:2])
    items = [encoder.item(r, False) for r in task.eval[:8]]
    if answers == "single tokens":  # one position read per row (_single_token), not the prompt's continued cache
        items = [{**x, "choice_ids": [[5], [6], [7]]} for x in items]
    model = backbone.model.eval()
    cached, whole, scores = cached_and_whole(backbone)

    calls, handle = count_images(model)
    with torch.no_grad():
        once = torch.cat([scores(cached, items[b: b + 4]) for b in (0, 4)])
    handle.remove()
    assert calls == [2, 4, 4]  # the 2 demonstrations' images once, then each batch's 4 query images
    assert len(cached.prefix.prefix) > 100 and "<image>" in backbone.tokenizer.decode(cached.prefix.prefix)
    with torch.no_grad():
        torch.testing.assert_close(once, torch.cat([scores(whole, items[b: b + 4]) for b in (0, 4)]),
                                   atol=1e-5, rtol=1e-5)


def test_a_different_demonstration_image_does_not_reuse_the_cache(tmp_path, image_root):
    """Demonstrations of two training rows of one colour give the same tokens and different pixels. A batch whose
    demonstration image differs from the cached prefix's runs its own prefix; rows of one batch that differ in
    their second demonstration's image share only the prefix up to that image."""
    task, backbone, encoder_of = colour_encoders(image_root, tmp_path / "cache")
    first, b, c = task.train[0], *[r for r in task.train[1:] if r["label"] == task.train[1]["label"]][:2]
    assert b["image"] != c["image"]
    ab, ac = encoder_of(first, b), encoder_of(first, c)
    x = [ab.item(r, False) for r in task.eval[:2]]
    y = [ac.item(r, False) for r in task.eval[:2]]
    z = [ab.item(task.eval[2], False), ac.item(task.eval[3], False)]
    assert [i["prompt_ids"] for i in x] == [i["prompt_ids"] for i in y] == [i["prompt_ids"] for i in z]
    model = backbone.model.eval()
    cached, whole, scores = cached_and_whole(backbone)

    calls, handle = count_images(model)
    with torch.no_grad():
        got = [scores(cached, batch) for batch in (x, y)]
        full_prefix = len(cached.prefix.prefix)
        got.append(scores(cached, z))
    handle.remove()
    assert calls == [2, 2, 2, 2, 1, 4]  # y: a prefix of its own; z: the first demonstration's image only
    assert len(cached.prefix.prefix) < full_prefix
    with torch.no_grad():
        want = [scores(whole, batch) for batch in (x, y, z)]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert (want[0] - want[1]).abs().max() > 1e-4  # the demonstration's image changes the scores


def test_images_are_cached_by_content_not_by_file_name(tmp_path, image_root):
    """Hub rows carry image bytes with a bare file name: two images with the same name are two images."""
    backbone = load_backbone(compose_config(["model=tiny_random_vlm"]).model, tmp_path / "cache")
    blocks = ImageBlocks(backbone.processor)
    files = sorted((image_root / "colours" / "images").glob("train_000[01].png"))  # a red and a green shape
    a, b = ({"bytes": f.read_bytes(), "path": "0.png"} for f in files)
    assert not torch.equal(blocks.block(a)[1]["pixel_values"], blocks.block(b)[1]["pixel_values"])
    assert blocks.block(dict(a))[1] is blocks.block(a)[1]  # the same bytes: processed once


@pytest.mark.parametrize(("overrides", "match"), [
    (["method.n_ctx=-1", "method.context=''"], "a whole number in 0..64"),
    (["method.n_ctx=true", "method.context=''"], "a whole number in 0..64"),
    (["method.n_ctx=100", "method.context=''"], "a whole number in 0..64"),
    (["method.n_ctx=2.5", "method.context=''"], "a whole number in 0..64"),
    (["method.context=5"], "method.context=5 is not text"),
    (["method.context=''"], "one of them"),
    (["method.n_ctx=4"], "one of them"),
    (["data.clip_templates=['a {label} {shape}']"], "only placeholder"),
    (["data.clip_templates=[a photo]"], "only placeholder"),
    (["data.clip_templates=[]"], "only placeholder"),
    (["data.clip_templates='a {label}'"], "must be a list"),
])
def test_bad_coop_and_clip_prompt_knobs_are_one_message(image_root, overrides, match):
    cfg = compose_config(["model=tiny_random_clip", "method=coop", "data=colours", "logger=none",
                          f"paths.data_root={image_root}", *overrides])
    with pytest.raises(ConfigError, match=match):
        plan(cfg)


def test_clip_text_features_are_computed_once_per_evaluation(tmp_path, image_root):
    """The answers' text features do not change between evaluation batches: CLIP's text tower runs once, and again
    after the module has been in train mode (CoOp's context moves there)."""
    from promptlab.data import collate

    cfg = compose_config(["model=tiny_random_clip", "data=colours", "method=coop", "method.context=''",
                          "method.n_ctx=4"])
    spec = TaskSpec.from_config(cfg.data)
    backbone = load_backbone(cfg.model, tmp_path / "cache")
    method = build_method(cfg.method)
    model, readout = method.prepare(backbone, spec), method.readout(backbone.tokenizer, spec)
    items = [method.encoder(backbone, spec, []).item(r, False) for r in load_task(spec, str(image_root)).eval]
    calls = []
    handle = model.clip.text_model.register_forward_hook(lambda *a: calls.append(1))

    def evaluate():
        with torch.no_grad():
            return torch.cat([readout.scores(model, collate(items[b:b + 4])) for b in range(0, len(items), 4)])

    model.eval()
    first = evaluate()
    assert len(calls) == 1
    model.train()
    with torch.no_grad():
        model.ctx.add_(torch.randn(model.ctx.shape, generator=torch.Generator().manual_seed(0)))  # a step, as it were
    model.eval()
    second = evaluate()
    handle.remove()
    assert len(calls) == 2 and not torch.allclose(first, second)
    model._frozen_text = None
    with torch.no_grad():
        torch.testing.assert_close(second, evaluate())  # the cached features are the ones a fresh pass computes


def test_an_image_folder_without_images_is_one_message(tmp_path):
    for split in ("train", "validation"):
        (tmp_path / "data" / "colours" / split / "red").mkdir(parents=True)
        (tmp_path / "data" / "colours" / split / "red" / "notes.txt").write_text("not an image")
    cfg = compose_config(["model=tiny_random_clip", "method=clip_zero_shot", "data=colours", "logger=none",
                          f"paths.data_root={tmp_path / 'data'}"])
    with pytest.raises(ConfigError, match="cannot read the image folder") as err:
        plan(cfg)
    assert "<split>/<class name>/<image>" in err.value.fix
