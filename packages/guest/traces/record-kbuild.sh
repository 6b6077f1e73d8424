#!/bin/sh
# Records the bundled `kbuild` trace: a real compile (gcc driver, cc1, as) of zpipe.c, next to this script,
# under valgrind lackey, then imports the per-process logs into kbuild.vxt.
#
#   sh packages/guest/traces/record-kbuild.sh          (from the repository root, after `npm run build`)
#
# zpipe.c is zlib's example of inflate()/deflate() (Mark Adler, public domain; Debian ships it in
# zlib1g-dev as /usr/share/doc/zlib1g-dev/examples/zpipe.c). It includes <zlib.h>, so recording needs
# zlib1g-dev (`apt-get install zlib1g-dev`), valgrind (3.19 was used) and gcc (12.2 was used). GCC_OPT
# picks the optimisation level (-O0 keeps the trace small: cc1 at -O1 is ~140 M accesses on a smaller file,
# 141 M accesses recorded for a 12-line file). The logs (about 2.6 GB of text) go to a temporary directory that is
# removed at the end.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
GCC_OPT=${GCC_OPT:--O0}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/kbuild-lackey.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
cp "$HERE/zpipe.c" "$DIR/zpipe.c"
cd "$DIR"
valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes --trace-children=yes \
  --log-file="$DIR/kbuild.%p.%n" gcc "$GCC_OPT" -c zpipe.c -o zpipe.o
ls -l "$DIR"
node "$ROOT/packages/cli/dist/bin/vmexit.js" trace import lackey "$DIR"/kbuild.*.* -o "$HERE/kbuild.vxt"
node "$ROOT/packages/cli/dist/bin/vmexit.js" trace info "$HERE/kbuild.vxt"
