"""Attack and victim helpers of `benchmarks/bench_adversarial.py` (benchmark code, never shipped)."""
