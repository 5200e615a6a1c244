"""The distributed entry point by path from a checkout; the launcher itself is growclip_train/launch.py
(``python -m growclip_train.launch`` / ``deepspeed --module growclip_train.launch`` once installed).

    deepspeed --num_accelerators 2 launchers/grow.py --step 1 --config demo --run-dir runs/demo
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from growclip_train.launch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
