#!/usr/bin/env bash
# Installs, with apt-get, every Debian 12 package faultline needs to build, test and run.
# Does nothing when all are present.  Run as root (or with sudo available).
set -euo pipefail
pkgs=(meson ninja-build pkg-config gcc libc6-dev
      libuv1-dev libzmq3-dev libprotobuf-c-dev protobuf-c-compiler libopenblas-dev
      libopenblas-pthread-dev
      libsystemd-dev libinih-dev libjansson-dev libmicrohttpd-dev libcmocka-dev
      python3-torch python3-numpy python3-pandas python3-sklearn python3-zmq python3-protobuf
      protobuf-compiler prometheus scdoc systemd python3-yaml
      clang libclang-rt-14-dev valgrind libseccomp-dev
      libmosquitto-dev mosquitto mosquitto-clients python3-paho-mqtt)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}" >&2
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
