#!/bin/sh
# Install the offline wheelhouse with no package index: sh install.sh [DATASET_DIR]
# (the same as `submission.offline.install_offline_wheels(DATASET_DIR)`).
set -eu
DIR="${1:-$(dirname "$0")}"
python -m pip install --no-index --disable-pip-version-check \
    --find-links "$DIR/wheels" -r "$DIR/requirements.txt"
