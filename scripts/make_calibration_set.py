"""Write the layer-pruning calibration set that ships with a policy folder (``calibration.npz``).

``N`` observations evenly spaced over the even-numbered frames of every demo (all tasks covered; the frames
``vlaccel demo`` and ``vlaccel bench`` calibrate on, the odd ones being their fidelity frames), as the arrays
``LayerPruneConfig`` reads: ``image`` [N, H, W, 3] uint8, ``instruction`` [N], ``proprio`` [N, P]. The bundled
reference policy's set was made from two scripted demos per task (seeds 0-1, the training seeds' range):

    MUJOCO_GL=egl .venv/bin/vlaccel collect --episodes 2 --out /tmp/calibration_demos
    .venv/bin/python scripts/make_calibration_set.py /tmp/calibration_demos src/vlaccel/assets/reference/calibration.npz
"""

from __future__ import annotations

import argparse

import numpy as np

from vlaccel.bench.fidelity import load_observations
from vlaccel.models import load_policy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("demos", help="a demo folder (`vlaccel collect` output)")
    p.add_argument("out", help="the .npz to write")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--policy", default="reference", help="the policy whose config sizes the observations")
    args = p.parse_args()
    config = load_policy(args.policy).config
    picks, source = load_observations(config, args.samples, args.demos, half=0)
    if source.startswith("SYNTHETIC"):
        raise SystemExit(f"no demos found: {source}")
    np.savez_compressed(args.out, image=np.stack([o.image for o in picks]),
                        instruction=np.array([o.instruction for o in picks]),
                        proprio=np.stack([o.proprio for o in picks]).astype(np.float32))
    print(f"wrote {len(picks)} observations to {args.out}: {source}")


if __name__ == "__main__":
    main()
