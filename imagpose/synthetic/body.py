"""The stick figure's dimensions, in figure units (standing height 1)."""

SPINE = 0.30  # pelvis -> base of the neck
NECK = 0.105  # base of the neck -> head centre
HEAD_RX, HEAD_RY = 0.056, 0.068
UPPER_ARM, FOREARM = 0.175, 0.155
THIGH, SHIN = 0.245, 0.245
ANKLE_HEIGHT, FOOT = 0.035, 0.085
TORSO_DEPTH = 0.055  # half the chest depth: the torso is a box seen from any yaw
