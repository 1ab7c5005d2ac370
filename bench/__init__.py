"""imagpose.bench: speed/parity benchmarks against PIDM, CFLD, PoCoLD and PCDMs (issue #5)."""
