"""The benchmarks behind tools/bench_perf.py, tools/bench_build.py and tools/bench_memory.py.

Each script only calls ``main`` of its module here (``perf``, ``build``, ``memory``); the script's folder
is on ``sys.path`` when it runs, so ``bench`` imports as a package. The measuring they share lives in
``harness`` (timing, repetitions, memory, the machine) and ``report`` (results and markdown tables);
B1-B6 are split into ``plan`` (sizes), ``models`` (models and batches built through mmit's own code),
``loops`` (B1, B2, B4: mmit's training loop) and ``llm`` (B3, B5, B6: one LLM's training step).
"""
