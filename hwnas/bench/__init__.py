"""On-device benchmarking, trtexec-style."""
