#!/usr/bin/env bash
# Install everything, then run the demo: EfficientNet-Lite0 (ImageNet) -> Fashion-MNIST, 200 images.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/smart-transfer demo "$@"
