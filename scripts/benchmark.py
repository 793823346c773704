"""Training-step benchmark against PEFT, the frozen forward and full fine-tuning: `softprompt-bench`.

    python scripts/benchmark.py --help
"""

import sys

from softprompt.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
