#!/bin/sh
# Install qjobd as a system service (run by `sudo make install`; README "Run as a service").
#
#   PREFIX       the daemon's own virtual environment          (/opt/qjobd)
#   SYSCONFDIR   configuration, credentials, sysusers          (/etc)
#   UNITDIR      systemd units                                 (/etc/systemd/system)
#   BINDIR       where qjobctl and qjobd are linked for users  (/usr/local/bin)
#   PYTHON       the interpreter the environment is made from  (python3)
#   DESTDIR      a staging root: files go under it, and nothing is done to the running
#                system (no users created, no daemon-reload)
#   QJOBD_NO_VENV=1  skip the virtual environment (to check the rest quickly)
#
# Safe to run again: the environment is upgraded in place, and an existing
# /etc/qjobd/qjobd.toml or credential file is never overwritten.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PREFIX:-/opt/qjobd}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-$SYSCONFDIR/systemd/system}
BINDIR=${BINDIR:-/usr/local/bin}
PYTHON=${PYTHON:-python3}
DESTDIR=${DESTDIR:-}
ETC=$DESTDIR$SYSCONFDIR/qjobd
CREDENTIALS=$ETC/credentials
# one credential per backend key, as LoadCredential= in qjobd.service names them
KEYS="ionq qoro"

say() { printf '%s\n' "$*"; }

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
    say "install: run as root (sudo make install), or set DESTDIR to stage the files" >&2
    exit 1
fi

if [ "${QJOBD_NO_VENV:-0}" != 1 ]; then
    say "==> virtual environment in $DESTDIR$PREFIX"
    "$PYTHON" -m venv "$DESTDIR$PREFIX"
    "$DESTDIR$PREFIX/bin/pip" install --quiet --upgrade pip
    # a copy, not an editable install: the service must not run code from a work tree
    # EXTRAS: optional parts, e.g. EXTRAS=postgresql for a store shared by several servers
    "$DESTDIR$PREFIX/bin/pip" install --quiet --upgrade "$SRC${EXTRAS:+[$EXTRAS]}"
fi
install -d -m 755 "$DESTDIR$PREFIX"
install -m 644 "$SRC/README.md" "$DESTDIR$PREFIX/README.md"
install -d -m 755 "$DESTDIR$BINDIR"
for tool in qjobctl qjobd; do
    ln -sfn "$PREFIX/bin/$tool" "$DESTDIR$BINDIR/$tool"
done

say "==> units in $DESTDIR$UNITDIR, users in $DESTDIR$SYSCONFDIR/sysusers.d"
install -d -m 755 "$DESTDIR$UNITDIR" "$DESTDIR$SYSCONFDIR/sysusers.d"
sed "s|/opt/qjobd|$PREFIX|g" "$SRC/systemd/qjobd.service" > "$DESTDIR$UNITDIR/qjobd.service"
sed "s|/opt/qjobd|$PREFIX|g" "$SRC/systemd/qjobd.socket" > "$DESTDIR$UNITDIR/qjobd.socket"
chmod 644 "$DESTDIR$UNITDIR/qjobd.service" "$DESTDIR$UNITDIR/qjobd.socket"
install -m 644 "$SRC/systemd/qjobd.sysusers" "$DESTDIR$SYSCONFDIR/sysusers.d/qjobd.conf"

say "==> configuration in $ETC"
install -d -m 755 "$ETC"
if [ -e "$ETC/qjobd.toml" ]; then
    install -m 644 "$SRC/systemd/qjobd.toml" "$ETC/qjobd.toml.example"
    say "    kept your $SYSCONFDIR/qjobd/qjobd.toml; the example is qjobd.toml.example"
else
    install -m 644 "$SRC/systemd/qjobd.toml" "$ETC/qjobd.toml"
fi
# root's only: systemd reads these and hands the service a private copy of each
install -d -m 700 "$CREDENTIALS"
for key in $KEYS; do
    # an empty placeholder: LoadCredential= refuses to start the service on a missing file
    [ -e "$CREDENTIALS/$key" ] || install -m 600 /dev/null "$CREDENTIALS/$key"
done

if [ -z "$DESTDIR" ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$SYSCONFDIR/sysusers.d/qjobd.conf"
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
fi

cat <<EOF

qjobd is installed.

Start it, now and at every boot (unfinished jobs resume at boot):
    systemctl enable --now qjobd.socket qjobd.service

Let a user submit jobs (the socket's group; like the docker group, it takes effect at
the user's next login):
    usermod -aG qjobd-submit USER

Store an API key as a systemd credential (root only; never in the config file or the
environment). For the backend named "ionq":
    install -m 600 /dev/stdin $SYSCONFDIR/qjobd/credentials/ionq    # paste the key, then Ctrl-D
    systemctl restart qjobd
The service reads it as \$CREDENTIALS_DIRECTORY/ionq. One file per backend, named
after it: $KEYS have LoadCredential= lines in qjobd.service; for another, add
LoadCredential=NAME:$SYSCONFDIR/qjobd/credentials/NAME with systemctl edit qjobd.

Configuration: $SYSCONFDIR/qjobd/qjobd.toml (systemctl reload qjobd applies budgets
and polling). Status: systemctl status qjobd. Errors only: journalctl -p err -u qjobd
EOF
if [ -n "$DESTDIR" ]; then
    say ""
    say "(staged under $DESTDIR: on the target, run systemd-sysusers and systemctl daemon-reload)"
fi
