#!/bin/sh
# First deploy of the demo system (examples/) to a fresh managed host over a shaped link (issue
# 13's figures): a throwaway sshd and the coordinator in a private network namespace
# (`unshare -n`, as root), `lo` at MTU 1500 limited to RATE by netem (20 ms each way) or, where
# the kernel has no netem, tbf (no added latency). The host has a fresh $HOME and no ferry on
# its PATH, so the agent is uploaded. Prints the time of `ferry deploy` and the bytes `lo` sent
# (everything on the wire, both directions). Usage: first_deploy.sh FERRY [RATE] [DEPLOY-ARGS]
set -eu
FERRY=$(realpath "$1"); RATE=${2:-20mbit}
EXAMPLES=$(realpath "$(dirname "$0")/../examples")
W=$(mktemp -d /tmp/ferry-first-deploy.XXXX)
mkdir -p "$W/home" "$W/hosthome" "$W/ssh"
ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/host" ; ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/id"
cp "$W/ssh/id.pub" "$W/ssh/authorized_keys"
cat > "$W/ssh/sshd_config" <<CFG
Port 2222
ListenAddress 127.0.0.1
HostKey $W/ssh/host
AuthorizedKeysFile $W/ssh/authorized_keys
PidFile $W/ssh/pid
PermitRootLogin yes
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
SetEnv HOME=$W/hosthome
CFG
cp -r "$EXAMPLES/pkgs" "$EXAMPLES/motd" "$W/"
cat > "$W/d.toml" <<TOML
[operating-system.demo]
host-name = "demo"
packages = ["./pkgs/hello"]
files = { "motd" = { source = "./motd" }, "demo/greeting" = "Hello from ferry\n" }
services = [{ name = "hello", start = 'hello demo > "\$FERRY_ROOT/var/hello.txt"' }]
health-checks = [{ command = 'grep -q "Hello, demo" "\$FERRY_ROOT/var/hello.txt"' }]
[[machine]]
name = "fresh"
operating-system = { inherit = "demo", host-name = "fresh" }
[machine.configuration]
host-name = "127.0.0.1"
port = 2222
identity = "$W/ssh/id"
host-key = "$(cut -d' ' -f1,2 "$W/ssh/host.pub")"
root = "$W/hostroot"
TOML
unshare -n sh -c "
  ip link set lo up mtu 1500
  if tc qdisc add dev lo root netem delay 20ms rate $RATE 2>/dev/null; then echo netem-20ms-each-way > $W/qdisc
  else tc qdisc add dev lo root tbf rate $RATE burst 32kb latency 50ms; echo tbf-no-added-latency > $W/qdisc; fi
  /usr/sbin/sshd -f $W/ssh/sshd_config -E $W/ssh/log
  sleep 0.3
  ip -s -j link show lo | python3 -c 'import json,sys; print(json.load(sys.stdin)[0][\"stats64\"][\"tx\"][\"bytes\"])' > $W/tx0
  cd $W && /usr/bin/time -f '%e' -o $W/time env HOME=$W/home FERRY_ROOT=$W/coordinator $FERRY deploy d.toml ${3:-} > $W/out 2> $W/err || echo FAILED
  ip -s -j link show lo | python3 -c 'import json,sys; print(json.load(sys.stdin)[0][\"stats64\"][\"tx\"][\"bytes\"])' > $W/tx1
  kill \$(cat $W/ssh/pid)
"
echo "qdisc=$(cat $W/qdisc) ferry=$FERRY size=$(stat -c %s "$FERRY") rate=$RATE seconds=$(cat $W/time) lo_bytes=$(( $(cat $W/tx1) - $(cat $W/tx0) ))"
grep -h "uploading agent\|error" "$W/err" | tail -3
ls -la "$W/hosthome/.cache/ferry/agent" 2>/dev/null | tail -2
