"""Backbone loading from a local folder or a random config, freezing, dtype, and the trainable prompt staying
fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from softprompt.backbones import count_unique_params, fingerprint, load_backbone


def test_local_folder_loads_the_same_weights_frozen(tmp_path, tiny_backbone):
    original = tiny_backbone(fresh=True)  # saving it is left to a private copy
    original.model.save_pretrained(tmp_path / "model")
    original.tokenizer.save_pretrained(tmp_path / "model")
    loaded = load_backbone({"name": "local", "name_or_path": str(tmp_path / "model"), "revision": None,
                            "dtype": "float32", "family": "auto", "gradient_checkpointing": False,
                            "attention": "auto"}, tmp_path / "cache")
    assert fingerprint(loaded.model) == fingerprint(original.model)
    assert loaded.family == "causal_lm" and loaded.source == str(tmp_path / "model")
    assert not any(p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training
    assert loaded.tokenizer("abc").input_ids == original.tokenizer("abc").input_ids


def test_tiny_random_is_reproducible(tiny_backbone):
    assert fingerprint(tiny_backbone(fresh=True).model) == fingerprint(tiny_backbone(fresh=True).model)


def test_tied_weights_are_counted_once(tiny_backbone):
    backbone = tiny_backbone()
    embedding = backbone.model.get_input_embeddings().weight
    assert backbone.model.get_output_embeddings().weight is embedding
    assert backbone.total_params() == count_unique_params(backbone.model)
    assert backbone.total_params() == sum(p.numel() for p in backbone.model.parameters())  # torch dedups too
    assert backbone.total_params() < sum(t.numel() for t in backbone.model.state_dict().values())


def test_bf16_backbone_with_fp32_prompt_trains_the_prompt_only(tiny_backbone, prompt_module, make_batch):
    backbone = tiny_backbone(dtype="bfloat16")
    assert backbone.model.get_input_embeddings().weight.dtype == torch.bfloat16
    module = prompt_module(backbone, [["n"], ["p"]])
    assert module.prompt.dtype == torch.float32
    before, prompt_before = fingerprint(backbone.model), module.prompt.detach().clone()
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=1.0)
    batch = make_batch(backbone, ["good", "bad film"], "[P:4]{text} =", labels=[1, 0])
    loss = F.cross_entropy(module(batch), batch["labels"])
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(module.prompt.detach(), prompt_before)
    assert module.prompt.dtype == torch.float32 and fingerprint(backbone.model) == before


def test_fingerprints_are_xxh3_and_old_blake2b_ones_are_still_checked(tiny_backbone):
    from softprompt.backbones.loading import BLAKE2B, XXH3, fingerprint_algorithm

    backbone = tiny_backbone(fresh=True)
    new, old = fingerprint(backbone.model), fingerprint(backbone.model, algorithm=BLAKE2B)
    assert new.startswith("xxh3:") and len(new) == len("xxh3:") + 32 and fingerprint_algorithm(new) == XXH3
    assert len(old) == 32 and int(old, 16) >= 0 and fingerprint_algorithm(old) == BLAKE2B  # bare hex, as before
    with torch.no_grad():
        backbone.model.get_input_embeddings().weight[3, 1] += 2 ** -20  # one weight, one low bit
    assert fingerprint(backbone.model) != new and fingerprint(backbone.model, algorithm=BLAKE2B) != old


def test_a_fingerprint_in_another_dtype_is_that_of_the_weights_loaded_in_it(tiny_backbone):
    backbone = tiny_backbone(fresh=True)
    expected = fingerprint(backbone.model.to(torch.bfloat16))
    assert fingerprint(backbone.model.float()) != expected
    assert fingerprint(tiny_backbone(fresh=True).model, as_dtype=torch.bfloat16) == expected
