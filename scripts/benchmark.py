"""Training-step benchmark against PEFT, the frozen forward and full fine-tuning: `softprompt-bench`.

    python scripts/benchmark.py --help
    python scripts/benchmark.py backbone=tiny_random steps=2 warmup=1 -- task.max_length=64
"""

import sys

from softprompt.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
