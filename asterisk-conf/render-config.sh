#!/bin/sh
# Deploys the test PBX's whole, standalone configuration (asterisk-conf/ as shipped): copies
# every *.conf of SOURCE_DIR and of SOURCE_DIR/callrec into TARGET_DIR (and its callrec/),
# replacing each @NAME@ placeholder with the environment variable NAME (the ARI and SIP
# passwords, which are never in the repository). Refuses, and writes nothing, while any
# placeholder's variable is unset or empty. Values are read from the environment, never
# from the command line, so they do not show in `ps`. New files take TARGET_DIR's group.
#
# This REPLACES the files it copies: it is for a PBX that runs only callrec. To add callrec
# to an existing Asterisk, use `callrec asterisk install --etc /etc/asterisk` instead, which
# keeps the operator's files and only adds include lines.
#
#   CALLREC_ARI_PASSWORD=... render-config.sh asterisk-conf /etc/asterisk
set -eu

usage="usage: render-config.sh SOURCE_DIR TARGET_DIR"
src=${1:?$usage}
dst=${2:?$usage}
[ -d "$src" ] || { echo "render-config.sh: $src is not a directory" >&2; exit 2; }

umask 027 # the rendered files hold secrets: owner and group (asterisk) only
mkdir -p "$dst"
work=$(mktemp -d "$dst/.callrec-render.XXXXXX")
trap 'rm -rf "$work"' EXIT
[ ! -d "$src/callrec" ] || mkdir "$work/callrec"

failed=0
for file in "$src"/*.conf "$src"/callrec/*.conf; do
    [ -f "$file" ] || continue
    name=${file#"$src"/}
    if ! awk -v file="$name" '
        {
            rest = $0; out = ""
            while (match(rest, /@[A-Z][A-Z0-9_]*@/)) {
                var = substr(rest, RSTART + 1, RLENGTH - 2)
                value = ENVIRON[var]
                if (value == "") {
                    printf "render-config.sh: %s line %d: %s is not set\n", file, NR, var > "/dev/stderr"
                    bad = 1
                } else if (value ~ /[;\n\r]/ || value ~ /^[ \t]/ || value ~ /[ \t]$/) {
                    # Asterisk cuts a value at ";" (a comment) and trims outer blanks.
                    printf "render-config.sh: %s: %s has a \";\", a line break or outer blanks, which an Asterisk config file cannot hold\n", file, var > "/dev/stderr"
                    bad = 1
                }
                out = out substr(rest, 1, RSTART - 1) value
                rest = substr(rest, RSTART + RLENGTH)
            }
            print out rest
        }
        END { exit bad }' "$file" > "$work/$name"; then
        failed=1
    fi
done
[ "$failed" -eq 0 ] || { echo "render-config.sh: nothing was written to $dst" >&2; exit 1; }
group=$(stat -c %g "$dst")
chgrp -R "$group" "$work" 2>/dev/null || true # as root; otherwise the files keep ours
if [ -d "$work/callrec" ]; then
    mkdir -p "$dst/callrec"
    chgrp "$group" "$dst/callrec" 2>/dev/null || true
fi
for file in "$work"/*.conf "$work"/callrec/*.conf; do
    [ -f "$file" ] || continue
    mv -f "$file" "$dst/${file#"$work"/}"
done
