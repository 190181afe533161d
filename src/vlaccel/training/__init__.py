"""Training the reference policy on simulator demonstrations (``vlaccel train-reference``)."""
