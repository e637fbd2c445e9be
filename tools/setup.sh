#!/usr/bin/env bash
# One-command set-up of the ams_ros workspace on a fresh machine (idempotent), for one ROS 2
# distribution at a time, each in its own folders so that switching never mixes them:
#   1. system build tools (cmake, g++, make) via apt when missing,
#   2. .venv-<distro> with the pinned Python dependencies (requirements/<distro>.txt),
#   3. colcon build of ams_msgs + ams_ros against that venv into build-<distro>/,
#      install-<distro>/ and log-<distro>/,
#   4. .env-<distro>.sh that puts the venv, AMENT_PREFIX_PATH and the overlay in place, and
#      .env.sh, which sources the .env-<distro>.sh of the distribution chosen as below.
# A second run with nothing changed only compares stamps and takes seconds.
#
# The distribution: AMS_ROS_DISTRO, else ROS_DISTRO (which a sourced /opt/ros/<distro>/setup.bash
# sets on a ROS machine), else jazzy. Only distributions with PyPI wheels are accepted.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DISTROS="jazzy kilted"
DISTRO=${AMS_ROS_DISTRO:-${ROS_DISTRO:-jazzy}}
case " $DISTROS " in
  *" $DISTRO "*) ;;
  *)
    src=ROS_DISTRO; [ -n "${AMS_ROS_DISTRO:-}" ] && src=AMS_ROS_DISTRO
    echo "[setup] $src='$DISTRO' is not a ROS 2 distribution this workspace can install (PyPI wheels exist for: ${DISTROS// /, })." >&2
    echo "[setup] Pick one: 'make setup' (jazzy, the default) or 'ROS_DISTRO=kilted make setup';" \
         "where ROS_DISTRO names another distribution (e.g. a sourced /opt/ros/humble), set AMS_ROS_DISTRO=jazzy or kilted, which wins." >&2
    exit 2 ;;
esac
VENV="$ROOT/.venv-$DISTRO"
BUILD="$ROOT/build-$DISTRO"
INSTALL="$ROOT/install-$DISTRO"
LOGDIR="$ROOT/log-$DISTRO"
REQ="requirements/$DISTRO.txt"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

log() { printf '[setup:%s] %s\n' "$DISTRO" "$*"; }

# A shell that sourced a ROS installation (/opt/ros/...) or a workspace of this checkout (either
# distribution) must not leak into this one: drop their entries from the search paths.
strip_foreign() {  # VAR: remove entries under /opt/ros/ and this checkout's venvs and colcon folders
  local var=$1 out="" entry parts=()
  IFS=: read -r -a parts <<< "${!var:-}"
  for entry in "${parts[@]}"; do
    case "$entry" in
      ""|/opt/ros/*) continue ;;
      "$ROOT"|"$ROOT"/.venv*|"$ROOT"/install*|"$ROOT"/build*) continue ;;
    esac
    out=${out:+$out:}$entry
  done
  if [ -n "$out" ]; then export "$var=$out"; else unset "$var"; fi
}
for v in PATH PYTHONPATH LD_LIBRARY_PATH AMENT_PREFIX_PATH CMAKE_PREFIX_PATH COLCON_PREFIX_PATH; do strip_foreign "$v"; done
unset VIRTUAL_ENV _ROS_WHEELS_BOOTSTRAP_COMPLETE

# 1. system tools
missing=()
for tool in cmake g++ make; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing system packages for: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ make >/dev/null
fi

# 2. virtual environment with pinned dependencies (the distribution's file and the common one)
req_hash=$(cat "$REQ" requirements/common.txt | sha256sum | cut -d' ' -f1)
if [ -e "$VENV" ] && ! { [ -f "$VENV/pyvenv.cfg" ] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; }; then
  log "$VENV is not a working venv (an interrupted install or removal?): creating it anew"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.requirements.sha" 2>/dev/null)" != "$req_hash" ]; then
  log "installing Python dependencies ($REQ: torch from local disk, ROS 2 $DISTRO wheels from PyPI); takes a few minutes the first time"
  "$VENV/bin/python" -m pip install -q -r "$REQ"
  echo "$req_hash" > "$VENV/.requirements.sha"
  rm -f "$BUILD/.colcon.sha"
else
  log "Python dependencies up to date ($VENV)"
fi

# 2b. `ros2 launch`, launch_testing and the ROS 2 CLI (issue #27). No wheels exist: on a machine
# whose venv already imports them (a ROS installation's) they are used as they are; else their
# upstream Jazzy sources from ../shared/vendor/ros2-jazzy (the only ones there; pure Python, they
# run on Kilted's rclpy too) are checked against SHA256SUMS and installed into the venv, and
# composition_interfaces (which launch_ros imports) is built with the workspace below. Where
# neither is there, one line says so and the launch tests skip.
VENDOR=${AMS_ROS_VENDOR:-$ROOT/../shared/vendor/ros2-jazzy}
LAUNCH_REQ="requirements/$DISTRO-launch.txt"
VENDOR_SRC="$BUILD/vendor"
COMPOSITION=""
launch_importable() {  # found, not imported: launch_ros needs composition_interfaces, built with the workspace
  "$VENV/bin/python" -c 'import importlib.util as u, sys
sys.exit(not all(u.find_spec(m) for m in ("launch", "launch_ros", "ros2launch", "ros2cli", "launch_testing")))' 2>/dev/null
}
if [ -f "$VENDOR/SHA256SUMS" ] && [ -f "$LAUNCH_REQ" ]; then
  vendor_hash=$(cat "$VENDOR/SHA256SUMS" "$LAUNCH_REQ" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$VENV/.ros2-launch.sha" 2>/dev/null)" = "$vendor_hash" ] && launch_importable \
      && [ -d "$VENDOR_SRC/composition_interfaces" ]; then
    log "ros2 launch and the ROS 2 CLI up to date (from ${VENDOR#"$ROOT"/})"
  else
    log "installing ros2 launch, launch_testing and the ROS 2 CLI from ${VENDOR#"$ROOT"/} (upstream sources)"
    ( cd "$VENDOR" && sha256sum --quiet -c SHA256SUMS ) \
      || { echo "[setup:$DISTRO] $VENDOR: an archive does not match SHA256SUMS; not installing it" >&2; exit 1; }
    rm -rf "$VENDOR_SRC" && mkdir -p "$VENDOR_SRC"
    for archive in "$VENDOR"/*.tar.gz; do tar -xzf "$archive" -C "$VENDOR_SRC"; done
    "$VENV/bin/python" -m pip install -q -r "$LAUNCH_REQ"
    s="$VENDOR_SRC"
    # --no-deps: launch_ros asks for ament_index_python, whose wheel has another name (ros-...)
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation \
      "$s"/launch-*/{launch,launch_xml,launch_yaml,launch_testing,launch_pytest} \
      "$s"/launch_ros-*/{launch_ros,launch_testing_ros,ros2launch} "$s"/rosidl_runtime_py-* \
      "$s"/ros2cli-*/{ros2cli,ros2pkg,ros2node,ros2topic,ros2service,ros2param,ros2run,ros2interface,ros2lifecycle,ros2action}
    mv "$s"/rcl_interfaces-*/composition_interfaces "$VENDOR_SRC/composition_interfaces"
    echo "$vendor_hash" > "$VENV/.ros2-launch.sha"
  fi
  COMPOSITION="$VENDOR_SRC/composition_interfaces"
elif launch_importable; then
  log "ros2 launch and the ROS 2 CLI: the ones this venv already has"
else
  log "ros2 launch and the ROS 2 CLI are not installed: no ROS installation and no ${VENDOR#"$ROOT"/} (their sources); the launch tests will skip"
fi

# 3. colcon build (ams_msgs interfaces + ams_ros python package, symlinked for live edits)
src_hash=$( { echo "$DISTRO $req_hash ${vendor_hash:-}"; find ams_msgs -type f | sort | xargs sha256sum; sha256sum package.xml setup.py setup.cfg colcon_defaults.yaml tools/cmake/*.cmake; ls launch config rviz 2>/dev/null || true; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$BUILD/.colcon.sha" 2>/dev/null)" != "$src_hash" ] || [ ! -f "$INSTALL/setup.bash" ]; then
  log "building the workspace with colcon into ${BUILD#"$ROOT"/}/ and ${INSTALL#"$ROOT"/}/"
  mkdir -p "$LOGDIR"
  export AMENT_PREFIX_PATH="$VENV"
  export PATH="$VENV/bin:$PATH"
  "$VENV/bin/colcon" --log-base "$LOGDIR" build --symlink-install --base-paths . ams_msgs ${COMPOSITION:+"$COMPOSITION"} \
      --build-base "$BUILD" --install-base "$INSTALL" \
      --event-handlers console_cohesion- status- summary+ \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" \
                   -DCMAKE_PROJECT_INCLUDE="$ROOT/tools/cmake/strip_missing_wheel_includes.cmake" \
                   -DBUILD_TESTING=OFF > "$LOGDIR/colcon-build.txt" 2>&1 \
    || { tail -40 "$LOGDIR/colcon-build.txt"; echo "[setup:$DISTRO] colcon build failed (full log: ${LOGDIR#"$ROOT"/}/colcon-build.txt)" >&2; exit 1; }
  mkdir -p "$BUILD" && echo "$src_hash" > "$BUILD/.colcon.sha"
else
  log "workspace build up to date (${INSTALL#"$ROOT"/}/)"
fi

# 4. environment files: .env-<distro>.sh for this distribution, .env.sh to pick one
cat > ".env-$DISTRO.sh.tmp" <<ENV
# Generated by tools/setup.sh: source it to use the ams_ros workspace of this checkout on ROS 2 $DISTRO.
# Entries of a sourced /opt/ros/... and of this checkout's venvs and colcon folders (either
# distribution) are dropped first; this file then adds its own.
_ams_strip() {
  local var=\$1 out="" entry parts=()
  IFS=: read -r -a parts <<< "\${!var:-}"
  for entry in "\${parts[@]}"; do
    case "\$entry" in
      ""|/opt/ros/*) continue ;;
      "$ROOT"|"$ROOT"/.venv*|"$ROOT"/install*|"$ROOT"/build*) continue ;;
    esac
    out=\${out:+\$out:}\$entry
  done
  if [ -n "\$out" ]; then export "\$var=\$out"; else unset "\$var"; fi
}
for _ams_v in PATH PYTHONPATH LD_LIBRARY_PATH AMENT_PREFIX_PATH CMAKE_PREFIX_PATH COLCON_PREFIX_PATH; do _ams_strip "\$_ams_v"; done
unset -f _ams_strip; unset _ams_v VIRTUAL_ENV _ROS_WHEELS_BOOTSTRAP_COMPLETE
source "$VENV/bin/activate"
export ROS_DISTRO=$DISTRO ROS_VERSION=2 ROS_PYTHON_VERSION=3
export AMENT_PREFIX_PATH="$VENV"
source "$INSTALL/setup.bash"
case ":\$AMENT_PREFIX_PATH:" in *":$VENV:"*) ;; *) export AMENT_PREFIX_PATH="\$AMENT_PREFIX_PATH:$VENV" ;; esac
export PYTHONPATH="$ROOT\${PYTHONPATH:+:\$PYTHONPATH}"
export LD_LIBRARY_PATH="\${LD_LIBRARY_PATH%:}"   # colcon leaves a trailing ":" (= the current directory)
ENV
mv ".env-$DISTRO.sh.tmp" ".env-$DISTRO.sh"
cat > .env.sh.tmp <<ENV
# Generated by tools/setup.sh: source it for the ams_ros workspace of this checkout on the ROS 2
# distribution AMS_ROS_DISTRO, else ROS_DISTRO, else jazzy (each set up by \`make setup\`).
_ams_distro=\${AMS_ROS_DISTRO:-\${ROS_DISTRO:-jazzy}}
case "\$_ams_distro" in
  ${DISTROS// /|}) ;;
  *) echo ".env.sh: ROS 2 distribution '\$_ams_distro' is not one of: ${DISTROS// /, } (set AMS_ROS_DISTRO)" >&2; unset _ams_distro; return 2 ;;
esac
if [ -f "$ROOT/.env-\$_ams_distro.sh" ]; then
  source "$ROOT/.env-\$_ams_distro.sh"; unset _ams_distro
else
  echo ".env.sh: \$_ams_distro is not set up here yet: run 'AMS_ROS_DISTRO=\$_ams_distro make setup'" >&2; unset _ams_distro; return 1
fi
ENV
mv .env.sh.tmp .env.sh
log "ready: source .env-$DISTRO.sh (or .env.sh, which picks the distribution as make does)"
