"""imagpose.train: the 3-stage IMAGPose trainer."""
