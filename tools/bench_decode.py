"""Benchmark: media decoding for training, the prefetch thread vs decode worker processes (the code: tools/bench/decode.py).

python tools/bench_decode.py [--images 256] [--size 336] [--workers 1 2 4] [--step-ms 0 300]
"""

from bench.decode import main

if __name__ == "__main__":
    main()
