"""Measurements of the engine's own internals (kernels, the 4-bit output layer), run as
``python -m engine.bench.NAME``; what users feel is measured under benchmarks/."""
