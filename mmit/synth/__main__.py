"""``python -m mmit.synth <recipe> [key=value ...]``."""

from mmit.synth.generate import main

main()
