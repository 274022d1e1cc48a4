# Sourced by scripts/run and scripts/test (bash): a virtualenv kept in step with the
# project, so nothing is installed into the system Python (Debian's refuses: PEP 668).
# Uses $PY, the interpreter as given: a command on PATH or a path.

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

# apt_install PKG...: install those of the Debian packages that are not installed yet
# (and list them in $INSTALLED).
INSTALLED=""
apt_install() {
    local pkg missing=""
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
    done
    [ -n "$missing" ] || return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "${0##*/}: please install:$missing (Debian's names)" >&2; return 1
    fi
    if [ -n "$SUDO" ] && ! command -v sudo >/dev/null 2>&1; then
        echo "${0##*/}: needs root to install:$missing (run: su -c 'apt-get install$missing')" >&2
        return 1
    fi
    local t0=$SECONDS
    echo "${0##*/}: installing Debian packages:$missing ..." >&2
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
    INSTALLED="$INSTALLED$missing"
    echo "${0##*/}: installed them in $((SECONDS - t0)) s" >&2
}

# check_python: $PY runs and is Python >= 3.11.
check_python() {
    if ! "$PY" -c 'import sys' >/dev/null 2>&1; then
        echo "${0##*/}: cannot run '$PY' (PYTHON= names the interpreter, Python >= 3.11)" >&2
        return 1
    fi
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "${0##*/}: $PY is $("$PY" -V 2>&1); bouncer needs Python >= 3.11" >&2; return 1; }
}

# need_venv_module: Debian's python3 cannot make a venv (no ensurepip) without python3-venv.
need_venv_module() {
    "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 && return 0
    local ver; ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    apt_install python3-venv "python$ver-venv" || return 1
    "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || {
        echo "${0##*/}: $PY still has no ensurepip/venv module" >&2; return 1; }
}

# ensure_venv DIR KEY PIP_ARGS...: make the venv DIR if it is missing, broken or was made
# by another interpreter; `pip install PIP_ARGS` into it when it is new or KEY (a text
# naming what the install depends on) differs from the last successful install's.
ensure_venv() {
    local dir=$1 key=$2; shift 2
    local base t0
    base=$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable), sys.version)' | tr '\n' ' ')
    if [ -d "$dir" ] && { [ "$(cat "$dir/.base" 2>/dev/null)" != "$base" ] \
            || ! "$dir/bin/python" -c 'import sys' >/dev/null 2>&1; }; then
        rm -rf "$dir"
    fi
    if [ ! -d "$dir" ]; then
        need_venv_module
        t0=$SECONDS
        "$PY" -m venv "$dir" || { rm -rf "$dir"; return 1; }
        printf '%s\n' "$base" > "$dir/.base"
        echo "${0##*/}: made $dir ($("$dir/bin/python" -V 2>&1)) in $((SECONDS - t0)) s" >&2
    fi
    if [ "$(cat "$dir/.installed" 2>/dev/null)" != "$key" ]; then
        t0=$SECONDS
        echo "${0##*/}: pip install $* into $dir ..." >&2
        rm -f "$dir/.installed"
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$dir/bin/python" -m pip install -q "$@"
        printf '%s\n' "$key" > "$dir/.installed"
        echo "${0##*/}: installed in $((SECONDS - t0)) s" >&2
    fi
}
