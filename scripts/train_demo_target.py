"""Retrains the bundled demo target from scratch (2,500 steps, batch 32: about 5 minutes on a 2-core CPU).

    python scripts/train_demo_target.py [--members 200] [--steps 2500] [--out jaxmia/assets/demo_target]

This is ``scripts/train_target.py`` with ``--out`` defaulting to the bundled target's folder; every
other default of that script is the demo recipe (200 members, 2,500 steps, batch 32, lr 3e-3, seed 0).
"""

from train_target import main

from jaxmia.data.demo import DEMO_TARGET

if __name__ == "__main__":
    main(default_map={"out": str(DEMO_TARGET)})
