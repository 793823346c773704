"""Placing prompts into the input embeddings: the right rows land in the slots, and the backward pass sums each
prompt row's gradients in a fixed order, so one seed's runs are bit-identical (metrics.json included)."""

from __future__ import annotations

import torch

from softprompt.backbones.families import place_prompts


def test_prompt_rows_land_in_their_slots_and_tokens_keep_their_embeddings():
    embeds = torch.randn(2, 5, 4)
    prompts = torch.randn(3, 4)
    slots = torch.tensor([[0, 1, 2, -1, -1], [-1, 2, -1, 0, -1]])
    placed = place_prompts(embeds, prompts, slots)
    for row in range(2):
        for position in range(5):
            slot = int(slots[row, position])
            expected = prompts[slot] if slot >= 0 else embeds[row, position]
            assert torch.equal(placed[row, position], expected)


def test_prompt_gradients_are_bit_identical_from_run_to_run():
    # Batch and width large enough for the CPU kernels to split the work across threads (where indexing's
    # backward summed in a thread-dependent order).
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randn(20, 576, generator=generator, requires_grad=True)
    embeds = torch.randn(32, 100, 576, generator=generator)
    slots = torch.full((32, 100), -1)
    slots[:, :20] = torch.arange(20)
    upstream = torch.randn(32, 100, 576, generator=generator)
    grads = []
    for _ in range(10):
        prompts.grad = None
        place_prompts(embeds, prompts, slots).backward(upstream)
        grads.append(prompts.grad.clone())
    assert all(torch.equal(grad, grads[0]) for grad in grads)
    assert torch.allclose(grads[0], upstream[:, :20].sum(0), atol=1e-4)
