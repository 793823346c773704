"""Mixed-prompt batches: several prompts on one backbone, each row with its own, equal to each prompt alone."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import softprompt
from softprompt.artifacts.format import SPEC_FILE, ArtifactError
from softprompt.artifacts.mixed import injection_kind
from softprompt.backbones.attention_prefix import PREFIX_KWARG
from softprompt.methods.prompt_tuning import PromptTuning

pytestmark = pytest.mark.xdist_group("mixed_prompts")  # its tests share the module's trained prompts

RUN = ["backbone=tiny_random", "logger=none", "trainer.max_steps=2", "trainer.val_check_interval=2",
       "data.batch_size=4", "data.eval_batch_size=8"]
TOPICS = {"business": ["Shares fell as profits slipped", "The bank raised rates again"],
          "entertainment": ["The film topped the box office", "A singer released a new album"],
          "politics": ["The minister faced questions in parliament", "Voters go to the polls on Friday"],
          "sports": ["The striker scored twice in the final", "She won the tennis title in straight sets"],
          "tech": ["A new chip makes phones faster", "The software update fixes a security flaw"]}
# Two tasks with different templates and label sets; prompts of every kind and of different lengths.
PROMPTS = {
    "sentiment_pt": ("sentiment", ["method=prompt_tuning", "method.num_virtual_tokens=3"]),
    "sentiment_v2": ("sentiment", ["method=p_tuning_v2", "method.num_virtual_tokens=2"]),
    "sentiment_hard": ("sentiment", ["method=hard_prompt", "method.num_demonstrations=2"]),
    "topic_prefix": ("topic", ["method=prefix_tuning", "method.num_virtual_tokens=4", "method.reparam_hidden=16"]),
    "topic_p_tuning": ("topic", ["method=p_tuning", "method.num_virtual_tokens=2"]),  # LSTM, folded away
}
TOPIC_TEXTS = [text for texts in TOPICS.values() for text in texts]


@pytest.fixture(scope="module")
def sentiment_texts(positive_reviews, negative_reviews) -> list[str]:
    return positive_reviews[:5] + negative_reviews[:5]


def topic_overrides(root: Path, write_jsonl) -> list[str]:
    rows = [{"body": text, "topic": topic} for topic, texts in TOPICS.items() for text in texts]
    files = {split: write_jsonl(root / f"{split}.jsonl", rows) for split in ("train", "validation", "test")}
    return ["task=bbc_topic", "task.name=local_topic", "task.source.asset=null",
            f"task.source.data_files={{train: {files['train']}, validation: {files['validation']}, "
            f"test: {files['test']}}}", "task.columns={text: body, label: topic}"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, run_job, local_task_overrides, write_jsonl) -> dict[str, Path]:
    """name -> prompt/ folder, each from a short real run on the tiny random backbone."""
    tasks = {"sentiment": local_task_overrides,
             "topic": topic_overrides(tmp_path_factory.mktemp("topic_data"), write_jsonl)}
    found = {}
    for name, (task, overrides) in PROMPTS.items():
        out = tmp_path_factory.mktemp(name) / "run"
        run_job([*RUN, *tasks[task], *overrides], out)
        found[name] = out / "prompt"
    return found


def forwards_of(mixed, call) -> tuple[list, object]:
    """`call()`'s result and, per backbone forward it made, each row's visible prefix length (None: no prefix)."""
    calls = []

    def hook(module, args, kwargs):
        prefix = kwargs.get(PREFIX_KWARG)
        calls.append(None if prefix is None else prefix.visible.sum(-1).tolist())

    handle = mixed.backbone.base_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        return calls, call()
    finally:
        handle.remove()


def assert_same_as_alone(artifacts, names, texts, prompts, scores) -> None:
    for name in names:
        rows = [i for i, p in enumerate(prompts) if p == name]
        alone = softprompt.load(artifacts[name]).score([texts[i] for i in rows])
        for i, want in zip(rows, alone, strict=True):
            assert list(scores[i]) == list(want)  # its own task's labels, in order
            assert list(scores[i].values()) == pytest.approx(list(want.values()), abs=1e-6, rel=0)


def test_a_mixed_batch_of_prompts_from_two_tasks_equals_each_prompt_alone(artifacts, sentiment_texts):
    mixed = softprompt.load_many({name: artifacts[name] for name in PROMPTS}, batch_size=8)
    assert mixed.kinds == ["input", "attention", "none", "attention", "input"]
    texts, prompts = [], []
    for i in range(10):  # every batch mixes the tasks and kinds, so rows of every prompt share forwards
        for name, (task, _) in PROMPTS.items():
            texts.append((sentiment_texts if task == "sentiment" else TOPIC_TEXTS)[(i * 3 + len(texts)) % 10])
            prompts.append(name)
    calls, scores = forwards_of(mixed, lambda: mixed.score(texts, prompts))
    assert len(calls) == math.ceil(len(texts) / 8)  # one backbone forward per batch
    # Rows with no prefix, P-tuning v2's 2 columns and prefix tuning's 4 share forwards.
    assert sum(set(c or [0]) == {0, 2, 4} for c in calls) >= 2
    assert {len(s) for s in scores} == {2, 5}
    assert_same_as_alone(artifacts, PROMPTS, texts, prompts, scores)
    assert mixed.predict(texts, [list(PROMPTS).index(p) for p in prompts]) == [max(s, key=s.get) for s in scores]

    records = mixed.predict_records(texts[:2], prompts[:2])
    assert [(r["row_index"], r["prompt"], list(r["probabilities"])) for r in records] == [
        (0, "sentiment_pt", ["negative", "positive"]), (1, "sentiment_v2", ["negative", "positive"])]


def test_every_prompt_on_every_input_in_one_pass(artifacts, sentiment_texts):
    names = ["sentiment_pt", "sentiment_v2", "sentiment_hard"]
    mixed = softprompt.load_many([artifacts[n] for n in names])  # a list: prompts named by index
    assert mixed.names == ["0", "1", "2"] and mixed.batch_size == 8
    each = mixed.score_each(sentiment_texts)
    for index, name in enumerate(names):
        alone = softprompt.load(artifacts[name]).score(sentiment_texts)
        for got, want in zip(each[str(index)], alone, strict=True):
            assert list(got.values()) == pytest.approx(list(want.values()), abs=1e-6, rel=0)
    assert each["0"] != each["1"] != each["2"]  # the prompts really differ, so a mix-up would show
    assert mixed.predict_each(sentiment_texts)["1"] == softprompt.load(artifacts[names[1]]).predict(sentiment_texts)
    assert mixed.predict(sentiment_texts[:2], 2) == mixed.predict(sentiment_texts[:2], ["2", "2"])


def test_bad_prompt_references_are_one_line_errors(artifacts):
    mixed = softprompt.load_many({"a": artifacts["sentiment_pt"], "b": artifacts["topic_prefix"]})
    cases = {"prompts[1] is 'c'; allowed: an index 0..1 or a name: a, b": (["x", "y"], ["a", "c"]),
             "prompts[0] is 2; allowed: an index 0..1 or a name: a, b": (["x"], [2]),
             "prompts[0] is True; allowed": (["x"], [True]),
             "prompts has 1 entries for 2 inputs; give one per input": (["x", "y"], ["a"])}
    for message, (texts, prompts) in cases.items():
        with pytest.raises(ArtifactError, match="^" + message.replace("[", r"\[").replace(".", r"\.")) as error:
            mixed.predict(texts, prompts)
        assert "\n" not in str(error.value)
    with pytest.raises(ArtifactError, match="got the single path"):
        softprompt.load_many(artifacts["sentiment_pt"])


def test_prompts_from_different_backbones_are_refused_before_loading_unless_forced(artifacts, tmp_path, caplog):
    other = tmp_path / "other"
    shutil.copytree(artifacts["topic_prefix"], other)
    spec = json.loads((other / SPEC_FILE).read_text())
    spec["backbone"]["config"]["random_init"]["seed"] = 1  # other weights, so another fingerprint
    spec["backbone"]["fingerprint"] = "xxh3:" + "0" * 32
    (other / SPEC_FILE).write_text(json.dumps(spec))
    ours = json.loads((artifacts["sentiment_pt"] / SPEC_FILE).read_text())["backbone"]["fingerprint"]
    with pytest.raises(ArtifactError) as error:
        softprompt.load_many({"mine": artifacts["sentiment_pt"], "theirs": other})
    assert str(error.value) == (f"prompt 'theirs' was trained on backbone tiny_random with fingerprint "
                                f"xxh3:{'0' * 32}, "
                                f"prompt 'mine' on tiny_random with fingerprint {ours}: a mixed batch runs every "
                                "prompt on one backbone; force=true mixes them anyway")
    mixed = softprompt.load_many({"mine": artifacts["sentiment_pt"], "theirs": other}, force=True)
    assert "mixing them anyway (force=true)" in caplog.text
    assert len(mixed.predict(["great fun", "Shares fell"], ["mine", "theirs"])) == 2

    spec = json.loads((artifacts["sentiment_pt"] / SPEC_FILE).read_text())
    spec["precision"] = "bf16-mixed"
    (tmp_path / "bf16").mkdir()
    (tmp_path / "bf16" / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match=r"^prompt '1' ran under precision bf16-mixed, prompt '0' under 32-true: "
                                            r"a mixed batch runs one precision$"):
        softprompt.load_many([artifacts["sentiment_pt"], tmp_path / "bf16"])


def test_a_method_injecting_another_way_is_refused(artifacts):
    module = softprompt.load(artifacts["sentiment_pt"]).module

    class Shifted(PromptTuning):  # e.g. a custom method that changes the embeddings differently
        def embed_inputs(self, batch):
            return super().embed_inputs(batch) * 2

    assert injection_kind(module, "x") == "input"
    module.__class__ = Shifted
    try:
        with pytest.raises(ArtifactError, match=r"^prompt 'x': method prompt_tuning \(.*Shifted\) injects its "
                                                "prompt in a way mixed batches cannot reproduce row by row"):
            injection_kind(module, "x")
    finally:
        module.__class__ = PromptTuning


def test_generation_prompts_decode_greedily_next_to_classification_rows(artifacts, sentiment_texts, headlines, run_job,
                                                                       write_jsonl, tmp_path):
    rows = [{"pair": {"body": body, "title": title}} for title, body in headlines]
    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", rows * 4) for split in ("train", "validation", "test")}
    task = ["task=bbc_headline", "task.name=local_headlines", "task.source.asset=null",
            f"task.source.data_files={{train: {files['train']}, validation: {files['validation']}, "
            f"test: {files['test']}}}", "task.columns={text: pair.body, target: pair.title}",
            "task.template='{text}'", "task.max_length=64"]
    runs = {"prefix": ["method=prefix_tuning", "method.num_virtual_tokens=3", "method.reparam_hidden=16",
                       "task.generation.max_new_tokens=8"],
            "prompt": ["method=prompt_tuning", "method.num_virtual_tokens=2", "task.generation.max_new_tokens=3"]}
    paths = {"sentiment": artifacts["sentiment_pt"]}
    for name, overrides in runs.items():
        run_job([*RUN, *task, *overrides], tmp_path / name)
        paths[name] = tmp_path / name / "prompt"
    mixed = softprompt.load_many(paths)
    bodies = [body for _, body in headlines]
    texts = [*bodies, *bodies, *sentiment_texts[:4]]
    prompts = ["prefix"] * 4 + ["prompt"] * 4 + ["sentiment"] * 4
    order = [i for pair in zip(range(0, 12, 2), range(1, 12, 2), strict=True) for i in pair][::-1]  # interleaved
    texts, prompts = [texts[i] for i in order], [prompts[i] for i in order]
    got = mixed.predict(texts, prompts)
    tokenizer = mixed.predictors[0].datamodule.tokenizer
    for name, path in paths.items():
        rows = [i for i, p in enumerate(prompts) if p == name]
        assert [got[i] for i in rows] == softprompt.load(path).predict([texts[i] for i in rows])
    longest = {name: max(len(tokenizer(got[i]).input_ids) for i, p in enumerate(prompts) if p == name)
               for name in runs}
    assert longest["prompt"] <= 3 < longest["prefix"]  # each row stops at its own prompt's max_new_tokens
    with pytest.raises(ArtifactError, match=r"^prompts\[0\] is 'prefix', a generation prompt: it has no label "):
        mixed.score(bodies[:1], "prefix")

    beams = tmp_path / "beams"
    shutil.copytree(paths["prompt"], beams)
    spec = json.loads((beams / SPEC_FILE).read_text())
    spec["task"]["generation"]["num_beams"] = 2
    (beams / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match=r"^prompt '1' decodes with task.generation.num_beams=2: mixed "
                                            "batches decode greedily"):
        softprompt.load_many([paths["prefix"], beams])


def test_an_ensemble_combines_every_prompt_in_the_same_batches(artifacts, sentiment_texts):
    names = ["sentiment_pt", "sentiment_v2", "sentiment_hard"]
    mixed = softprompt.load_many({name: artifacts[name] for name in names})
    alone = {name: softprompt.load(artifacts[name]).score(sentiment_texts) for name in names}
    calls, records = forwards_of(mixed, lambda: mixed.ensemble_records(sentiment_texts, vote="mean"))
    assert len(calls) == math.ceil(3 * len(sentiment_texts) / mixed.batch_size)  # every prompt, mixed batches
    labels = ["negative", "positive"]
    for row, record in enumerate(records):
        mean = {label: sum(alone[n][row][label] for n in names) / 3 for label in labels}
        assert record["probabilities"] == pytest.approx(mean, abs=1e-5)
        assert record["prediction"] == max(labels, key=lambda label: (mean[label], -labels.index(label)))
        members = {n: max(labels, key=lambda label: alone[n][row][label]) for n in names}
        assert record["members"] == members
        assert record["votes"] == {label: list(members.values()).count(label) for label in labels}
    assert mixed.ensemble(sentiment_texts, vote="mean") == [r["prediction"] for r in records]
    majority = mixed.ensemble(sentiment_texts, vote="majority")
    assert majority == [max(labels, key=lambda label: (r["votes"][label], r["probabilities"][label]))
                        for r in records]


def test_majority_vote_breaks_ties_by_mean_probability():
    from softprompt.artifacts.ensemble import combine

    members = [[[0.9, 0.1]], [[0.4, 0.6]]]  # one vote each; label 0 has the higher mean
    assert [c.label for c in combine(members, "majority")] == [0]
    assert combine(members, "majority")[0].votes == [1, 1]
    assert [c.label for c in combine([[[0.2, 0.8]], [[0.3, 0.7]], [[0.9, 0.1]]], "majority")] == [1]
    assert [c.label for c in combine([[[0.45, 0.55]], [[0.45, 0.55]], [[0.99, 0.01]]], "majority")] == [1]
    assert [c.label for c in combine([[[0.45, 0.55]], [[0.45, 0.55]], [[0.99, 0.01]]], "mean")] == [0]


def test_prompts_of_other_tasks_or_an_unknown_vote_cannot_ensemble(artifacts, sentiment_texts):
    from softprompt.artifacts.ensemble import EnsembleError

    mixed = softprompt.load_many({"a": artifacts["sentiment_pt"], "b": artifacts["topic_prefix"]})
    with pytest.raises(EnsembleError, match=r"prompt 'b' cannot join an ensemble with prompt 'a': it has labels "
                                            r"\['business', .*the ensemble needs one classification task"):
        mixed.ensemble(sentiment_texts)
    with pytest.raises(EnsembleError, match=r"vote='avg' is invalid: allowed: mean, majority"):
        softprompt.load_many([artifacts["sentiment_pt"], artifacts["sentiment_v2"]]).ensemble(sentiment_texts, "avg")
