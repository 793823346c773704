"""Generation: target-only loss, cached decoding with the prompt in place, and its references.

References: transformers' own loss and `generate()` (for the hard prompt, where both apply), and a
no-cache loop over our teacher-forced forward (for every method and family).
"""

from __future__ import annotations

import pytest
import torch

from softprompt.objectives.decoding import DecodingConfig, beam_search

METHODS = ["prompt_tuning", "p_tuning_lstm", "prefix_tuning", "p_tuning_v2", "hard_prompt"]
ARCHITECTURES = ["llama", "gpt2", "qwen2", "t5", "bart"]
SEQ2SEQ = ("t5", "bart")
TEXTS = ["a short one", "a much longer text that needs padding", "mid size"]
TEMPLATE = "Doc: {text}\nSum:"
NEW_TOKENS = 7


@pytest.fixture(scope="module")
def lively_backbones(tiny_backbone) -> dict:
    """architecture -> (backbone, its state when made): the lively backbones this module made, shared by its tests."""
    return {}


@pytest.fixture
def lively(tiny_backbone, lively_backbones):
    """`lively(architecture)`: a tiny random backbone with large weights: its greedy outputs vary from token to token
    (the stock 0.02 init repeats one token forever, which would make every comparison trivial). Made once per
    architecture for this module; a test that changed one fails."""

    def get(architecture: str):
        if architecture not in lively_backbones:
            backbone = tiny_backbone(architecture, fresh=True)  # its weights get replaced
            generator = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for parameter in backbone.model.parameters():
                    if parameter.dim() >= 2:
                        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
            lively_backbones[architecture] = backbone, tiny_backbone.state(backbone)
        return lively_backbones[architecture][0]

    yield get
    changed = [name for name, (backbone, state) in lively_backbones.items() if tiny_backbone.state(backbone) != state]
    assert not changed, f"this test changed the shared lively backbone(s) {changed}"


@pytest.fixture(scope="module")
def build(generation_objective, hard_prompt_module, method_module):
    """`build(method, backbone, **decoding)`: a generation module in eval mode, its prompt trained-looking."""

    def make(method: str, backbone, **decoding):
        objective = generation_objective(backbone, **({"max_new_tokens": NEW_TOKENS} | decoding))
        if method == "hard_prompt":
            module = hard_prompt_module(backbone, None, objective)
        else:
            module = method_module(method, backbone, None, n=3, objective=objective, init_range=1.0)
            for parameter in module.trainable_parameters():  # a trained-looking prompt, not the init
                torch.nn.init.normal_(parameter, std=0.5, generator=torch.Generator().manual_seed(1))
        return module.eval()

    return make


def with_targets(batch: dict, targets: list[list[int]], pad: int) -> dict:
    width = max(len(t) for t in targets)
    return {**batch, "target_ids": torch.tensor([t + [pad] * (width - len(t)) for t in targets]),
            "target_mask": torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in targets])}


class NoCacheSession:
    """Decodes by re-running the whole teacher-forced forward on the source plus everything generated."""

    def __init__(self, module, batch: dict) -> None:
        self.module, self.batch = module, dict(batch)
        self.generated = torch.zeros(len(batch["input_ids"]), 0, dtype=torch.long)

    def logits(self) -> torch.Tensor:
        pad = torch.zeros(len(self.generated), 1, dtype=torch.long)  # the slot whose prediction we read
        targets = torch.cat([self.generated, pad], dim=1)
        batch = {**self.batch, "target_ids": targets, "target_mask": torch.ones_like(targets)}
        with torch.no_grad():
            return self.module(batch)[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.generated = torch.cat([self.generated, tokens[:, None]], dim=1)
        return self.logits()

    def repeat(self, times: int) -> None:
        self.batch = {k: v.repeat_interleave(times, dim=0) if torch.is_tensor(v) else v for k, v in self.batch.items()}
        self.generated = self.generated.repeat_interleave(times, dim=0)

    def select(self, rows: torch.Tensor) -> None:
        self.batch = {k: v[rows] if torch.is_tensor(v) else v for k, v in self.batch.items()}
        self.generated = self.generated[rows]


def no_cache_greedy_loop(module, batch: dict, eos: int, steps: int) -> list[list[int]]:
    """The plainest reference: argmax of a full forward, one token at a time, no cache anywhere."""
    generated = [[] for _ in batch["input_ids"]]
    for _ in range(steps):
        targets = [[*row, 0] for row in generated]
        with torch.no_grad():
            logits = module(with_targets(batch, targets, 0))
        for i, row in enumerate(generated):
            if not row or row[-1] != eos:
                row.append(int(logits[i, len(row)].argmax()))
    return [row[: row.index(eos)] if eos in row else row for row in generated]


def frequent_token(module, batch) -> int:
    """A token greedy decoding emits after the first step: used as end-of-sequence so that
    hypotheses really finish, at different lengths."""
    first = module.generate(batch, DecodingConfig(max_new_tokens=4), module.objective.eos_token_id)
    starts = {row[0] for row in first}
    later = [t for row in first for t in row[1:] if t not in starts] or [t for row in first for t in row[1:]]
    return max(set(later), key=later.count)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("method", METHODS)
def test_cached_greedy_equals_a_no_cache_greedy_loop(method, architecture, make_batch, template_for, build, lively):
    backbone = lively(architecture)
    module = build(method, backbone)
    sides = ["right"] if architecture in SEQ2SEQ else ["right", "left"]
    for side in sides:
        batch = make_batch(backbone, TEXTS, template_for(method, 3, TEMPLATE), padding_side=side)
        eos = frequent_token(module, batch)
        cached = module.generate(batch, module.objective.decoding, eos)
        assert cached == no_cache_greedy_loop(module, batch, eos, NEW_TOKENS)
        assert any(len(row) < NEW_TOKENS for row in cached)  # some rows stopped at end-of-sequence
        assert len({tuple(row) for row in cached}) > 1  # rows differ: the source matters


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("method", METHODS)
def test_cached_beam_search_equals_the_same_search_without_cache(method, architecture, make_batch, template_for, build,
                                                                 lively):
    backbone = lively(architecture)
    module = build(method, backbone)
    batch = make_batch(backbone, TEXTS, template_for(method, 3, TEMPLATE))
    eos = frequent_token(module, batch)
    config = DecodingConfig(max_new_tokens=NEW_TOKENS, num_beams=3)
    with torch.no_grad():
        first, session = module.adapter.start_generation(module.backbone, module.prompted(batch))
        cached = beam_search(first.float(), session, eos, config)
    reference_session = NoCacheSession(module, batch)
    reference = beam_search(reference_session.logits().float(), reference_session, eos, config)
    assert cached == reference
    assert any(cached)


def sequence_score(module, batch, rows: list[list[int]], eos: int) -> torch.Tensor:
    """Each hypothesis' beam score: summed log-probability (with its eos, if it ended) / its length."""
    ended = [[*row, eos] if len(row) < NEW_TOKENS else row for row in rows]
    with torch.no_grad():
        log_probs = module(with_targets(batch, ended, 0)).log_softmax(-1)
    return torch.stack([log_probs[i, torch.arange(len(row)), torch.tensor(row)].sum() / len(row)
                        for i, row in enumerate(ended)])


def test_beam_search_finds_hypotheses_at_least_as_good_as_greedy(make_batch, build, lively):
    backbone = lively("llama")
    module = build("prefix_tuning", backbone)
    batch = make_batch(backbone, TEXTS, TEMPLATE)
    eos = frequent_token(module, batch)
    greedy = module.generate(batch, DecodingConfig(max_new_tokens=NEW_TOKENS), eos)
    beams = module.generate(batch, DecodingConfig(max_new_tokens=NEW_TOKENS, num_beams=4), eos)
    assert beams != greedy
    assert bool((sequence_score(module, batch, beams, eos) >= sequence_score(module, batch, greedy, eos) - 1e-6).all())


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "t5", "bart"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_hard_prompt_decodes_exactly_as_transformers_generate(architecture, num_beams, make_batch, build, lively):
    backbone = lively(architecture)
    module = build("hard_prompt", backbone, num_beams=num_beams)
    side = "right" if architecture in SEQ2SEQ else "left"  # transformers' generate wants left padding
    batch = make_batch(backbone, TEXTS, TEMPLATE, padding_side=side)
    eos = frequent_token(module, batch)
    ours = module.generate(batch, module.objective.decoding, eos)
    output = backbone.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     max_new_tokens=NEW_TOKENS, num_beams=num_beams, do_sample=False,
                                     length_penalty=1.0, early_stopping=False, eos_token_id=eos,
                                     pad_token_id=backbone.tokenizer.pad_token_id,
                                     forced_eos_token_id=None)  # BART's config forces eos at max length
    new = output[:, 1:] if architecture in SEQ2SEQ else output[:, batch["input_ids"].shape[1]:]
    theirs = [row[: row.index(eos)] if eos in row else row for row in new.tolist()]
    assert ours == theirs


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "t5", "bart"])
def test_loss_is_transformers_loss_on_the_target_tokens_only(architecture, make_batch, build, lively):
    backbone = lively(architecture)
    module = build("hard_prompt", backbone)
    batch = make_batch(backbone, ["one source text"], TEMPLATE)
    eos = backbone.tokenizer.eos_token_id
    target = [*backbone.tokenizer(" a target", add_special_tokens=False).input_ids, eos]
    ours = module.objective.loss(module, with_targets(batch, [target], 0))
    source = batch["input_ids"]
    with torch.no_grad():
        if architecture in SEQ2SEQ:
            theirs = backbone.model(input_ids=source, labels=torch.tensor([target])).loss
        else:
            labels = torch.tensor([[-100] * source.shape[1] + target])
            theirs = backbone.model(input_ids=torch.cat([source, torch.tensor([target])], 1), labels=labels).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_loss_does_not_depend_on_padding_side_or_batch_mates(method, make_batch, template_for, build, lively):
    backbone = lively("llama")
    module = build(method, backbone)
    template = template_for(method, 3, TEMPLATE)
    targets = [[40, 41, 1], [42, 1], [43, 44, 45, 46, 1]]
    per_example = []
    for i, text in enumerate(TEXTS):
        alone = with_targets(make_batch(backbone, [text], template), [targets[i]], 0)
        per_example.append(module(alone)[0, : len(targets[i])])
    for side in ("right", "left"):
        together = module(with_targets(make_batch(backbone, TEXTS, template, padding_side=side), targets, 0))
        for i, expected in enumerate(per_example):
            torch.testing.assert_close(together[i, : len(targets[i])], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("method", METHODS[:-1])
def test_every_method_learns_a_target_on_every_generating_family(method, architecture, make_batch, template_for,
                                                                 tiny_backbone, build):
    """A few optimizer steps on one example's target lower its loss; only the prompt moves."""
    backbone = tiny_backbone(architecture)
    module = build(method, backbone)
    module.train()
    batch = with_targets(make_batch(backbone, ["teach me"], template_for(method, 3, TEMPLATE)), [[40, 41, 1]], 0)
    frozen = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    optimizer = torch.optim.Adam(module.trainable_parameters(), lr=0.05)
    before = module.objective.loss(module, batch).item()
    for _ in range(5):
        optimizer.zero_grad()
        module.objective.loss(module, batch).backward()
        optimizer.step()
    assert module.objective.loss(module, batch).item() < before
    assert all(torch.equal(v, backbone.model.state_dict()[k]) for k, v in frozen.items())


def test_decoding_settings_are_checked():
    from softprompt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"task\.generation\.num_beams"):
        DecodingConfig.from_config({"max_new_tokens": 4, "num_beams": 0})
    with pytest.raises(ConfigError, match=r"task\.generation\.beam_size"):
        DecodingConfig.from_config({"max_new_tokens": 4, "num_beams": 2, "beam_size": 2})
    config = DecodingConfig.from_config({"max_new_tokens": 4, "num_beams": 1, "truncate_at": "\n"})
    assert config.finish("\n A headline\nArticle: more") == "A headline"


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "t5", "bart"])
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "hard_prompt"])
def test_one_read_of_the_source_gives_the_loss_pass_and_the_decoding_of_two(method, architecture, make_batch,
                                                                            template_for, build, lively):
    """Evaluation shares the prefill: its teacher-forced states and its decoded tokens equal those of the separate
    loss pass and `generate` (left- and right-padded, greedy and beam, targets of different lengths)."""
    backbone = lively(architecture)
    module = build(method, backbone)
    targets = [[40, 41, 42, 43], [44], [45, 46]]
    sides = ["right"] if architecture in SEQ2SEQ else ["right", "left"]
    for side, beams in [(side, beams) for side in sides for beams in (1, 3)]:
        batch = with_targets(make_batch(backbone, TEXTS, template_for(method, 3, TEMPLATE), padding_side=side),
                             targets, 0)
        eos = frequent_token(module, batch)
        config = DecodingConfig(max_new_tokens=NEW_TOKENS, num_beams=beams)
        hidden, tokens = module.score_and_generate(batch, config, eos)
        with torch.no_grad():
            reference = module.target_hidden(batch)
        mask = batch["target_mask"].bool()
        torch.testing.assert_close(hidden[mask], reference[mask], atol=1e-5, rtol=1e-5)
        assert tokens == module.generate(batch, config, eos)
        assert any(len(row) > 1 for row in tokens)
