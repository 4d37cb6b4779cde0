#!/bin/sh
# Downloaded by the builder, checked against sha256Checksum, then run on the build VM.
set -e
sudo mkdir -p /opt/web
echo "setup-web.sh ran on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)" | sudo tee /opt/web/setup.log
