#!/usr/bin/env bash
# The engine on llama.cpp's Vulkan backend, with Mesa's CPU implementation of Vulkan (llvmpipe)
# standing in for a GPU: an experiment for docs/distributed.md, not part of CI.
#
#   apt-get install mesa-vulkan-drivers libvulkan-dev glslc spirv-headers glslang-tools vulkan-tools
#   scripts/vulkan_check.sh [WORKDIR]
#
# Builds llama-cpp-python with -DGGML_VULKAN=on in a virtual environment of its own, sadi-cpp
# against it, then runs the engine's oracle tests with the tiny model's layers on the Vulkan
# device (SADI_TEST_N_GPU_LAYERS=-1: nodes in device buffers, read and edited through
# ggml_backend_tensor_get/set). Logs land in WORKDIR (default /tmp/sadi-vulkan).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-/tmp/sadi-vulkan}"
mkdir -p "$WORK"
# Debian 12: apt-get install mesa-vulkan-drivers libvulkan-dev glslc spirv-headers glslang-tools vulkan-tools
vulkaninfo --summary > "$WORK/vulkaninfo.txt" 2>&1 || { echo "no Vulkan device: see $WORK/vulkaninfo.txt"; exit 1; }
grep -E "deviceName|driverName|apiVersion" "$WORK/vulkaninfo.txt"
python3 -m venv "$WORK/venv"
. "$WORK/venv/bin/activate"
pip install -q scikit-build-core pybind11 cmake ninja numpy pytest >/dev/null
start=$(date +%s)
CMAKE_ARGS="-DGGML_VULKAN=on" pip install -v --no-cache-dir llama-cpp-python==0.3.36 > "$WORK/build-llama.log" 2>&1
echo "llama-cpp-python with Vulkan: exit $? after $(( $(date +%s) - start )) s (log: $WORK/build-llama.log)"
python -c "import llama_cpp; print('GPU offload supported:', llama_cpp.llama_supports_gpu_offload())"
pip install -q --no-build-isolation "$ROOT[test]" > "$WORK/build-sadi.log" 2>&1
echo "sadi-cpp: exit $?"
cd "$WORK"
SADI_TEST_N_GPU_LAYERS=-1 python -m pytest "$ROOT/tests/test_hook.py" "$ROOT/tests/test_add.py" "$ROOT/tests/test_gate.py" \
    "$ROOT/tests/test_configs.py" -q -p no:cacheprovider > "$WORK/tests.log" 2>&1
echo "oracle tests on Vulkan: exit $?"
tail -30 "$WORK/tests.log"
