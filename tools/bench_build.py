"""Benchmark: dataset build throughput vs the raw decode rate of the same images (the code: tools/bench/build.py).

python tools/bench_build.py [--images 1200] [--workers 1 2] [--cases demo png640 photo]
"""

from bench.build import main

if __name__ == "__main__":
    main()
