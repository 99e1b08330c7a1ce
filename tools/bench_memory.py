"""Does memory stay flat over a long run? (the code: tools/bench/memory.py)

python tools/bench_memory.py [--steps 2000] [--out docs/bench]
"""

from bench.memory import main

if __name__ == "__main__":
    main()
