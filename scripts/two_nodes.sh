#!/bin/bash
# Two "nodes" on one machine for the multi-node path: an sshd of our own listening on 127.0.0.1 and
# 127.0.0.2 (port 2222, key login), and ssh client settings for those two addresses, so that
# `deepspeed --hostfile` reaches them through pdsh exactly as it reaches cluster nodes.
# Idempotent; used by tests/test_multinode.py. Needs root (or an sshd the user may start) and the
# Debian packages openssh-server and pdsh (scripts/setup.sh installs them).
# Note: it adds a "Host 127.0.0.1 127.0.0.2" block to ~/.ssh/config (port 2222, our key) and its own
# public key, tagged growclip_ds-two_nodes, to ~/.ssh/authorized_keys.
set -euo pipefail
# State (host and user keys, sshd config and pid) lives in a private folder made by mktemp -d (mode
# 0700, owned by us); its name is remembered in ~/.cache/growclip_ds/two_nodes_dir so a second call
# reuses the running sshd. A folder someone else could have prepared is never used.
#   scripts/two_nodes.sh        start (or reuse) the two nodes
#   scripts/two_nodes.sh down   stop our sshd, remove our key line, ssh config block and private folder
PORT=${GROWCLIP_SSHD_PORT:-2222}
REMEMBER=~/.cache/growclip_ds/two_nodes_dir
private_dir() {  # owned by us and not accessible to anyone else
  [ -d "$1" ] && [ -O "$1" ] && [ "$(stat -c %a "$1")" = 700 ]
}
D=${GROWCLIP_SSHD_DIR:-}
if [ -z "$D" ] && [ -f "$REMEMBER" ] && private_dir "$(cat "$REMEMBER")"; then D=$(cat "$REMEMBER"); fi
if [ "${1:-}" = down ]; then
  if [ -n "$D" ] && private_dir "$D"; then
    if [ -f "$D/sshd.pid" ] && kill "$(cat "$D/sshd.pid")" 2>/dev/null; then
      for _ in $(seq 50); do kill -0 "$(cat "$D/sshd.pid")" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$D"
  fi
  rm -f "$REMEMBER"
  [ -f ~/.ssh/authorized_keys ] && sed -i '/ growclip_ds-two_nodes$/d' ~/.ssh/authorized_keys
  [ -f ~/.ssh/config ] && sed -i '/^# growclip_ds two nodes/,+6d' ~/.ssh/config
  echo "two nodes down: sshd stopped, key and ssh config block removed"
  exit 0
fi
if [ -z "$D" ]; then
  D=$(mktemp -d "${TMPDIR:-/tmp}/growclip_sshd.XXXXXXXX")
  mkdir -p "$(dirname "$REMEMBER")" && echo "$D" > "$REMEMBER"
fi
private_dir "$D" || { echo "$D: not a private folder of $(id -un) (mode 700); refusing to use it" >&2; exit 1; }
for tool in /usr/sbin/sshd pdsh ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "$tool missing: run scripts/setup.sh (installs openssh-server, pdsh)" >&2; exit 1; }
done
mkdir -p "$D" ~/.ssh /run/sshd
chmod 700 ~/.ssh
[ -f "$D/host_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$D/host_key"
[ -f "$D/user_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$D/user_key"
touch ~/.ssh/authorized_keys && chmod 600 ~/.ssh/authorized_keys
# only the key generated above, in our private folder, tagged so it can be found and removed
grep -qF "$(cut -d' ' -f1-2 "$D/user_key.pub")" ~/.ssh/authorized_keys \
  || echo "$(cut -d' ' -f1-2 "$D/user_key.pub") growclip_ds-two_nodes" >> ~/.ssh/authorized_keys
cat > "$D/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
ListenAddress 127.0.0.2
HostKey $D/host_key
PidFile $D/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
EOF
if ! { [ -f "$D/sshd.pid" ] && kill -0 "$(cat "$D/sshd.pid")" 2>/dev/null; }; then
  /usr/sbin/sshd -f "$D/sshd_config"
fi
if ! grep -qF "IdentityFile $D/user_key" ~/.ssh/config 2>/dev/null; then
  touch ~/.ssh/config && chmod 600 ~/.ssh/config
  sed -i '/^# growclip_ds two nodes/,+6d' ~/.ssh/config     # an older block naming another folder
  cat >> ~/.ssh/config <<EOF
# growclip_ds two nodes (scripts/two_nodes.sh)
Host 127.0.0.1 127.0.0.2
  Port $PORT
  IdentityFile $D/user_key
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
EOF
fi
for i in 1 2 3 4 5; do
  ssh -o BatchMode=yes 127.0.0.2 true 2>/dev/null && ssh -o BatchMode=yes 127.0.0.1 true 2>/dev/null && break
  sleep 1
done
ssh -o BatchMode=yes 127.0.0.2 true
echo "two nodes up: 127.0.0.1 and 127.0.0.2 (sshd port $PORT)"
