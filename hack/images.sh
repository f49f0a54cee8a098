#!/usr/bin/env bash
# Placeholder: being written (see docs/features.md).
echo "hack/images.sh: not built yet" >&2
exit 1
