#!/bin/sh
# Records the bundled `kbuild` trace: a real compile (gcc driver, cc1, as) of kbuild.c, next to this
# script, under valgrind lackey, then imports the per-process logs into kbuild.vxt.
#
#   sh packages/guest/traces/record-kbuild.sh          (from the repository root, after `npm run build`)
#
# Needs valgrind (3.19 was used) and gcc (12.2 was used). GCC_OPT picks the optimisation level (-O0 keeps
# the trace small: cc1 at -O1 is ~140 M accesses, see shared/reference/perf.md §4.3). The logs (hundreds of
# MB of text) go to a temporary directory that is removed at the end.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
GCC_OPT=${GCC_OPT:--O0}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/kbuild-lackey.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
cp "$HERE/kbuild.c" "$DIR/kbuild.c"
cd "$DIR"
valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes --trace-children=yes \
  --log-file="$DIR/kbuild.%p.%n" gcc "$GCC_OPT" -c kbuild.c -o kbuild.o
ls -l "$DIR"
node "$ROOT/packages/cli/dist/bin/vmexit.js" trace import lackey "$DIR"/kbuild.*.* -o "$HERE/kbuild.vxt"
node "$ROOT/packages/cli/dist/bin/vmexit.js" trace info "$HERE/kbuild.vxt"
