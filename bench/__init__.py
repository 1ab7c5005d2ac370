"""imagpose.bench: speed and output-parity benchmarks of IMAGPose against PIDM, CFLD, PoCoLD and PCDMs."""
