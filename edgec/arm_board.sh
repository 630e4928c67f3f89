#!/usr/bin/env bash
# An emulated aarch64 board for edgec: a Debian arm64 userland with the aarch64 TVM runtime, run under
# qemu-user, serving TVM RPC. No binfmt_misc, no chroot, and the host's dpkg is never touched.
#
# Run through `edgec board setup | start` (edgec/board.py), or directly:
#   bash edgec/arm_board.sh setup                   # idempotent; ~1 minute the first time
#   bash edgec/arm_board.sh start [--port 9090] [--cpu cortex-a72] [--key rpi4 --tracker HOST:PORT]
#                              [--host 127.0.0.1] [--port-end N]
#   bash edgec/arm_board.sh python [ARGS...]             # the board's python3.11 (aarch64, under qemu)
#   bash edgec/arm_board.sh dir                     # print the board folder
#
# The board lives in $EDGEC_BOARD_DIR (default ~/.cache/edgec/arm-board). `start` runs in the foreground
# (Ctrl-C stops it) and binds to 127.0.0.1 unless --host says otherwise.
set -euo pipefail

BOARD_DIR=${EDGEC_BOARD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/edgec/arm-board}
ROOTFS=$BOARD_DIR/rootfs
SITE=$ROOTFS/opt/edgec-site
PKG=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)   # the edgec package folder (checkout or installed)
TVM_VERSION=${EDGEC_BOARD_TVM:-0.27.0.post1}
TVM_FFI_VERSION=${EDGEC_BOARD_TVM_FFI:-0.1.14.post0}
QEMU=${EDGEC_QEMU:-qemu-aarch64-static}

say() { echo "arm_board: $*" >&2; }
die() { say "error: $*"; exit 1; }

host_pip() {
  # any x86 pip will do: it only downloads aarch64 wheels and unpacks them with --target
  if [ -n "${EDGEC_PYTHON:-}" ]; then "$EDGEC_PYTHON" -m pip "$@"   # edgec/board.py passes its own python
  elif command -v python3 >/dev/null; then python3 -m pip "$@"
  else die "no python3 with pip on this machine"; fi
}

setup_host_tools() {
  command -v "$QEMU" >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "$QEMU is missing: sudo apt-get install -y qemu-user-static"
  say "installing qemu-user-static"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null
}

setup_userland() {
  [ -e "$ROOTFS/.edgec-debs" ] && return 0
  local apt=$BOARD_DIR/apt-arm64 t0=$SECONDS
  say "arm64 userland (python3.11, libstdc++6, libgomp1) -> $ROOTFS"
  rm -rf "$ROOTFS" "$apt"
  mkdir -p "$apt/state/lists/partial" "$apt/cache/archives/partial" "$apt/etc/apt.conf.d" \
           "$apt/etc/preferences.d" "$ROOTFS"
  : > "$apt/state/status"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -r "$keyring" ] || die "$keyring is missing: apt-get install -y debian-archive-keyring"
  {
    echo "deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian bookworm main"
    echo "deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian bookworm-updates main"
    echo "deb [arch=arm64 signed-by=$keyring] http://deb.debian.org/debian-security bookworm-security main"
  } > "$apt/etc/sources.list"
  # A private apt state: its own lists, cache and (empty) dpkg status, architecture arm64 only.
  local opts=(-o "Dir::Etc=$apt/etc" -o "Dir::Etc::SourceList=$apt/etc/sources.list"
              -o Dir::Etc::SourceParts=/nonexistent -o "Dir::State=$apt/state"
              -o "Dir::State::status=$apt/state/status" -o "Dir::Cache=$apt/cache"
              -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Debug::NoLocking=1
              -o APT::Install-Recommends=0 -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update -qq
  apt-get "${opts[@]}" install -y -qq --download-only python3.11 libstdc++6 libgomp1 >/dev/null
  local deb
  for deb in "$apt"/cache/archives/*.deb; do dpkg-deb -x "$deb" "$ROOTFS"; done
  rm -rf "$apt/cache/archives"
  touch "$ROOTFS/.edgec-debs"
  say "userland done ($((SECONDS - t0)) s, $(du -sm "$ROOTFS" | cut -f1) MB)"
}

setup_wheels() {
  local stamp="$ROOTFS/.edgec-wheels-$TVM_VERSION-$TVM_FFI_VERSION"
  [ -e "$stamp" ] && return 0
  local wheels=$BOARD_DIR/wheels-aarch64 t0=$SECONDS
  local platform=(--only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11
                  --implementation cp --abi cp311)
  say "aarch64 wheels: apache-tvm==$TVM_VERSION apache-tvm-ffi==$TVM_FFI_VERSION numpy ... -> $SITE"
  rm -rf "$wheels" "$SITE" "$ROOTFS"/.edgec-wheels-*
  mkdir -p "$wheels"
  host_pip download -q --no-deps "${platform[@]}" -d "$wheels" "apache-tvm==$TVM_VERSION" \
      "apache-tvm-ffi==$TVM_FFI_VERSION" numpy ml_dtypes typing_extensions psutil cloudpickle
  host_pip install -q --no-deps --no-index "${platform[@]}" --target "$SITE" "$wheels"/*.whl
  # The board only runs models: the compiler library (~230 MB) is never loaded there.
  rm -f "$SITE/tvm/lib/libtvm_compiler.so"
  rm -rf "$wheels"
  touch "$stamp"
  say "wheels done ($((SECONDS - t0)) s)"
}

board_python() {
  [ -e "$ROOTFS/.edgec-debs" ] && [ -x "$ROOTFS/usr/bin/python3.11" ] \
    || die "no board in $BOARD_DIR: run edgec board setup"
  command -v "$QEMU" >/dev/null || die "$QEMU is missing: run edgec board setup"
  QEMU_LD_PREFIX=$ROOTFS QEMU_CPU=${QEMU_CPU:-cortex-a72} PYTHONPATH=$SITE \
  TVM_USE_RUNTIME_LIB=1 PYTHONDONTWRITEBYTECODE=1 PYTHONNOUSERSITE=1 \
    exec "$QEMU" "$ROOTFS/usr/bin/python3.11" "$@"
}

cmd_setup() {
  local t0=$SECONDS
  setup_host_tools
  setup_userland
  setup_wheels
  # smoke test: the emulated CPU runs the aarch64 TVM runtime
  QEMU_CPU=cortex-a72 "$0" python -c \
    "import platform, numpy, tvm; assert platform.machine() == 'aarch64'; print('arm_board: ready:', platform.machine(), 'tvm', tvm.__version__, 'numpy', numpy.__version__)"
  say "setup took $((SECONDS - t0)) s; board folder $BOARD_DIR"
}

cmd_start() {
  local port=9090 cpu=cortex-a72 host=127.0.0.1 key="" tracker="" port_end=""
  while [ $# -gt 0 ]; do
    case $1 in
      --port) port=$2; shift 2;;
      --port-end) port_end=$2; shift 2;;
      --cpu) cpu=$2; shift 2;;
      --host) host=$2; shift 2;;
      --key) key=$2; shift 2;;
      --tracker) tracker=$2; shift 2;;
      *) die "start: unknown option '$1' (--port N --cpu NAME --host ADDR --key KEY --tracker HOST:PORT --port-end N)";;
    esac
  done
  local args=(--host "$host" --port "$port" --port-end "${port_end:-$((port + 1))}")
  [ -n "$key" ] && args+=(--key "$key")
  [ -n "$tracker" ] && args+=(--tracker "$tracker")
  [ "$host" = 127.0.0.1 ] || [ "$host" = localhost ] || [ "$host" = ::1 ] ||
    say "WARNING: serving TVM RPC on $host: anyone who can reach this port can upload and run code on the board"
  # the server file is copied, not run from the repo: edgec/ holds modules named like stdlib ones (profile)
  mkdir -p "$BOARD_DIR/bin"
  # edgec_runtime.py (edgec/device/tvm_runner.py: standard library, numpy and tvm only) times kernels for the server
  cp "$PKG/device/board_server.py" "$BOARD_DIR/bin/edgec_board_server.py.$$"
  mv "$BOARD_DIR/bin/edgec_board_server.py.$$" "$BOARD_DIR/bin/edgec_board_server.py"
  cp "$PKG/device/tvm_runner.py" "$BOARD_DIR/bin/edgec_runtime.py.$$"
  mv "$BOARD_DIR/bin/edgec_runtime.py.$$" "$BOARD_DIR/bin/edgec_runtime.py"
  QEMU_CPU=$cpu board_python "$BOARD_DIR/bin/edgec_board_server.py" "${args[@]}"
}

case ${1:-} in
  setup) shift; cmd_setup "$@";;
  start) shift; cmd_start "$@";;
  python) shift; board_python "$@";;
  dir) echo "$BOARD_DIR";;
  *) echo "usage: $0 setup | start [--port 9090] [--cpu cortex-a72] [--key KEY --tracker HOST:PORT] [--host ADDR] | python ARGS | dir" >&2
     exit 2;;
esac
