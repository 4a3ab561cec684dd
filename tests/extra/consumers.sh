#!/bin/sh
# Consumer tests, run by `make check` from the repository root. Installs
# mlkern into temporary prefixes (make install, make install DESTDIR=, cmake
# --install, which must install the same bytes as make), then builds and runs
# tests/consumer against it through pkg-config (as C, and as C++ calling the
# C implementation), the README's first program (its output must be the one
# the README shows), CMake find_package from the staged (moved) tree,
# add_subdirectory and FetchContent; finally uninstalls and checks that only
# files not ours are left. Needs make, cmake, pkg-config, a C and a C++ compiler.
set -eu
repo=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
make=${MAKE:-make}
cc=${CC:-cc}
cxx=${CXX:-c++}
version=$(awk '/define MLKERN_VERSION_(MAJOR|MINOR|PATCH) /{v = v s $3; s = "."} END {print v}' mlkern.h)
series=${version%.*}
openmp=off
if echo 'int main(void) { return 0; }' | $cc -fopenmp -x c - -o "$tmp/omp_probe" 2>/dev/null; then openmp=on; fi

fail() { echo "FAILED: $*"; exit 1; }

# runs a consumer binary; it must report success with the expected OpenMP state
run_consumer() {
    out=$("$1") || fail "$1 exited with an error: $out"
    echo "   $out"
    case $out in
    *"mlkern $version ok"*"OpenMP $2)"*) ;;
    *) fail "$1: expected mlkern $version ok with OpenMP $2" ;;
    esac
}

cmake_consumer() { # build dir, expected OpenMP state, cmake -D arguments...
    dir=$1 omp=$2
    shift 2
    cmake -S tests/consumer -B "$dir" "$@" > "$dir.log" 2>&1 || { cat "$dir.log"; fail "configure $dir"; }
    cmake --build "$dir" >> "$dir.log" 2>&1 || { cat "$dir.log"; fail "build $dir"; }
    run_consumer "$dir/consumer" "$omp"
}

echo "== make install PREFIX=$tmp/prefix"
$make -s --no-print-directory install PREFIX="$tmp/prefix" DESTDIR= > /dev/null
find "$tmp/prefix" -type f | sed "s|^$tmp/prefix/|   |" | sort

echo "== cmake --install installs the same files, byte for byte"
cmake -S "$repo" -B "$tmp/top" -DMLKERN_BUILD_TESTS=OFF -DMLKERN_INSTALL=ON > "$tmp/top.log" 2>&1 ||
    { cat "$tmp/top.log"; fail "configure the top-level CMakeLists.txt"; }
DESTDIR="$tmp/cm" cmake --install "$tmp/top" --prefix "$tmp/prefix" > /dev/null
diff -r "$tmp/prefix" "$tmp/cm$tmp/prefix" || fail "make install and cmake --install differ"

echo "== pkg-config: C with the OpenMP note's flags, then C++ main + C implementation"
export PKG_CONFIG_PATH="$tmp/prefix/share/pkgconfig"
[ "$(pkg-config --modversion mlkern)" = "$version" ] || fail "pkg-config --modversion"
cflags=$(pkg-config --cflags mlkern)
libs=$(pkg-config --libs mlkern)
ompflags=
[ $openmp = on ] && ompflags=$(pkg-config --variable=openmp_flags mlkern)
# main.c, which sees only the declarations, must compile without a warning;
# impl.c compiles the whole implementation, which the test configurations check.
# shellcheck disable=SC2086
$cc -std=c99 $ompflags $cflags -c -o "$tmp/impl_c.o" tests/consumer/impl.c
# shellcheck disable=SC2086
$cc -std=c99 -Wall -Wextra -Wpedantic -Werror $ompflags $cflags -o "$tmp/pc_c" \
    tests/consumer/main.c "$tmp/impl_c.o" $ompflags $libs
run_consumer "$tmp/pc_c" $openmp
# shellcheck disable=SC2086
$cc -std=c99 $cflags -c -o "$tmp/impl.o" tests/consumer/impl.c
# shellcheck disable=SC2086
$cxx -x c++ -std=c++11 -Wall -Wextra -Wpedantic -Werror $cflags -c -o "$tmp/main.o" tests/consumer/main.c
# shellcheck disable=SC2086
$cxx -o "$tmp/pc_cxx" "$tmp/main.o" "$tmp/impl.o" $libs
run_consumer "$tmp/pc_cxx" off

echo "== the README's first program, through pkg-config, prints what the README shows"
doc=README.md
awk '/^```c$/ { on = 1; next } /^```$/ { if (on) exit } on' "$doc" > "$tmp/first.c"
sed -n 's/^    \(position [0-9]*: token .*\)/\1/p' "$doc" > "$tmp/first.expected"
if [ ! -s "$tmp/first.c" ] || [ ! -s "$tmp/first.expected" ]; then
    fail "no first program and its output in $doc"
fi
# shellcheck disable=SC2086
$cc -std=c99 -O2 $cflags -o "$tmp/first" "$tmp/first.c" $libs
"$tmp/first" > "$tmp/first.out" || fail "the first program exited with an error"
sed 's/^/   /' "$tmp/first.out"
diff "$tmp/first.expected" "$tmp/first.out" || fail "the first program's output differs from $doc"

echo "== make install DESTDIR=$tmp/stage PREFIX=/opt/mlkern, used from where it was staged"
$make -s --no-print-directory install DESTDIR="$tmp/stage" PREFIX=/opt/mlkern > /dev/null
grep -q '^prefix=/opt/mlkern$' "$tmp/stage/opt/mlkern/share/pkgconfig/mlkern.pc" || fail "pkg-config prefix"
echo "== CMake find_package(mlkern $series OPTIONAL_COMPONENTS OpenMP)"
cmake_consumer "$tmp/pkg" $openmp -DMLKERN_MODE=package \
    -DCMAKE_PREFIX_PATH="$tmp/stage/opt/mlkern" -DMLKERN_WANT_VERSION="$series"
if cmake -S tests/consumer -B "$tmp/pkg99" -DMLKERN_MODE=package \
        -DCMAKE_PREFIX_PATH="$tmp/stage/opt/mlkern" -DMLKERN_WANT_VERSION=99.0 > "$tmp/pkg99.log" 2>&1; then
    fail "find_package(mlkern 99.0) accepted version $version"
fi
echo "   find_package(mlkern 99.0) refused, as it should be"

echo "== CMake add_subdirectory"
cmake_consumer "$tmp/sub" $openmp -DMLKERN_MODE=subdirectory -DMLKERN_SOURCE="$repo"

echo "== CMake FetchContent from an archive of this checkout"
# exit status 1 is a file that changed while it was read (someone editing)
tar -czf "$tmp/mlkern.tar.gz" --exclude=./build --exclude=./.git -C "$repo" . || [ $? -eq 1 ]
cmake_consumer "$tmp/fetch" $openmp -DMLKERN_MODE=fetchcontent -DMLKERN_SOURCE="file://$tmp/mlkern.tar.gz"

echo "== make uninstall leaves only files that are not ours"
mkdir -p "$tmp/prefix/include/other" "$tmp/prefix/share/cmake/other"
for f in include/other.h include/other/other.h share/pkgconfig/other.pc share/cmake/other/otherConfig.cmake; do
    echo keep > "$tmp/prefix/$f"
done
$make -s --no-print-directory uninstall PREFIX="$tmp/prefix" DESTDIR= > /dev/null
left=$(cd "$tmp/prefix" && find . -type f | sort | tr '\n' ' ')
[ "$left" = "./include/other.h ./include/other/other.h ./share/cmake/other/otherConfig.cmake ./share/pkgconfig/other.pc " ] ||
    fail "after uninstall: $left"
[ ! -e "$tmp/prefix/share/cmake/mlkern" ] || fail "share/cmake/mlkern left behind"
$make -s --no-print-directory uninstall DESTDIR="$tmp/stage" PREFIX=/opt/mlkern > /dev/null
[ -z "$(find "$tmp/stage" -type f)" ] || fail "files left in the DESTDIR stage"
echo "consumers: all ok"
