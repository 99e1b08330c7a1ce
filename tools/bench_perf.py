"""Performance benchmarks B1-B6 (issue #7); the code is the package tools/bench/, its options in bench/perf.py.

python tools/bench_perf.py [--only B3,B5] [--quick] [--device cuda] [--out BENCHMARKS.md]
"""

from bench.perf import main

if __name__ == "__main__":
    main()
