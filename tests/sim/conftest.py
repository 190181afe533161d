import os

# Must happen before anything imports mujoco (metaworld does): headless offscreen rendering.
os.environ.setdefault("MUJOCO_GL", "egl")
