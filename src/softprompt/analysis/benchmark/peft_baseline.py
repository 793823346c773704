"""The PEFT baseline: PEFT's equivalent adapter on a copy of the backbone, trained in a plain PyTorch
loop as PEFT's docs train it (full-vocabulary logits, cross-entropy on the label word at the answer
position). Everything PEFT-specific in the benchmark lives here.
"""

from __future__ import annotations

import copy
from typing import Any

from softprompt.analysis.benchmark.measure import PEFT_SAME_KERNELS, BenchError, Runner
from softprompt.analysis.benchmark.runners import label_word_ids, lm_loss_step
from softprompt.backbones.families import Family


def peft_form(module: Any, method: dict, family: Family) -> Any:
    """Our method's declared PeftForm, or BenchError when PEFT has none."""
    from softprompt.methods.base import NotRepresentable

    cls = type(module)
    try:
        form = cls.peft_form(cls.parse_config(method), family)
    except NotRepresentable as error:
        raise BenchError(f"no PEFT baseline: {error}") from None
    return form


def peft_config(module: Any, form: Any) -> Any:
    """PEFT's adapter that trains the same structure as our method (its declared `PeftForm.training_options`:
    encoder type and width, prefix projection, rank; and the fields sized by our tensors, e.g. the task count), at
    the same prompt length."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    shapes = {key: tensor.shape for key, tensor in module.folded_state().items()}
    sized = {name: int(shapes[key][dim]) for name, (key, dim) in form.sized_by.items()}
    length = {form.length_field: module.num_virtual_tokens}
    return PEFT_TYPE_TO_CONFIG_MAPPING[form.peft_type](task_type="CAUSAL_LM", **length, **form.training_options,
                                                       **sized)


def peft_runners(job: Any, plain: dict, clip: float | None, device: Any) -> list[Runner]:
    """PEFT at its default attention (stock SDPA), and, where our backbone restricts the training step's
    attention kernels (softprompt.backbones.attention_prefix), PEFT on those same kernels too: fair both ways."""
    import torch

    from softprompt.backbones.attention_prefix import attention_backend, uses_math_kernel

    backend = attention_backend(job.backbone.model)
    runners = [_peft_runner(job, plain, clip, device, "PEFT", "sdpa")]
    if backend and uses_math_kernel(backend, torch.device(device).type, job.backbone.model.dtype, grad=True):
        runners.append(_peft_runner(job, plain, clip, device, PEFT_SAME_KERNELS, None))
    return runners


def _peft_runner(job: Any, plain: dict, clip: float | None, device: Any, name: str,
                 attention: str | None) -> Runner:
    """PEFT on a copy of the backbone; `attention`: the implementation to give the copy (None keeps ours)."""
    import torch
    from peft import get_peft_model

    from softprompt.methods.base import Injection

    method = job.module.method
    form = peft_form(method, plain["method"], job.backbone.family)
    config = peft_config(method, form)
    model = copy.deepcopy(job.backbone.model)
    if attention is not None:
        model.set_attn_implementation(attention)
    model = get_peft_model(model, config)
    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=float(plain["optimizer"]["lr"]))
    slots = method.num_virtual_tokens if plain["method"].get("slots") == "front" else 0
    ahead = method.num_virtual_tokens if method.injection == Injection.INPUT else 0  # PEFT's tokens go first
    return Runner(name, lm_loss_step(model, parameters, optimizer, clip, label_word_ids(method), slots, ahead,
                                     form.task_ids))
