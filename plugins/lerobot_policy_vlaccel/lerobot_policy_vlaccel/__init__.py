"""LeRobot imports this package (its distribution name starts with ``lerobot_policy_``) before it builds a policy.

It installs vlaccel's hook when ``VLACCEL_PRESET`` names presets, and does nothing otherwise; see
``vlaccel.integrations.lerobot_plugin``.
"""

from vlaccel.integrations.lerobot_plugin import install_from_environment

install_from_environment()
