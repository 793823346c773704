"""Notices optional libraries log on import, which are not the user's concern, kept off the console.

transformers imports torchao, and peft imports bitsandbytes, whenever they are installed (the `quant` extra), even
for a run that quantises nothing. On import torchao logs that its CUDA-only extensions did not load on a CPU
machine, torch logs that torchao registers enums in a deprecated way, and bitsandbytes (on avx512_bf16 CPUs) that
it could not fetch an optional kernel from the hub, which softprompt never fetches. At every LLM.int8 call
bitsandbytes logs that it casts inputs to float16 (docs/scaling.md says so once). Only these messages are dropped:
anything else those loggers say still shows.
"""

from __future__ import annotations

import logging

# logger name -> the start of each message dropped from it
NOTICES = {
    "torchao": ("Failed to load ",),
    "torch.utils._pytree": ("%s is an Enum subclass and is now natively supported",),
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    "bitsandbytes.autograd._functions": ("MatMul8bitLt: inputs will be cast from",),
}


class _DropNotices(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_library_notices() -> None:
    """Install the filters (idempotent); before transformers is imported, so its imports' notices are caught too."""
    for name, prefixes in NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(prefixes))
