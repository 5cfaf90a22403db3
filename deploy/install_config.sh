#!/bin/sh
# meson install script: copies the example configuration SRC to DIR/NAME
# (DIR under $DESTDIR) only if no file of that name is there, so that an
# installed, edited configuration is never overwritten.
set -eu
src=$1 dir=$2 name=$3
dest="${DESTDIR:-}$dir"
mkdir -p "$dest"
if [ -e "$dest/$name" ]; then
  echo "faultline: keeping the existing $dest/$name"
else
  cp "$src" "$dest/$name"
  chmod 0644 "$dest/$name"
  echo "faultline: installed the example configuration as $dest/$name"
fi
