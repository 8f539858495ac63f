# shellcheck shell=bash
# Emulated hosts on one Linux machine, sourced by cluster/netns-cluster and bench/netns-allreduce:
# one network namespace per host, each with an interface named eth0 at 10.78.<net>.<host + 1>/24, all on
# one bridge; links optionally shaped with tc tbf in both directions (the host's egress inside its
# namespace, its ingress on the bridge port). Needs root. Call netns_down on every exit (trap).
#
#   netns_up HOSTS [RATE|none] [MTU]   sets NETNS_PREFIX, NETNS_BRIDGE, NETNS_ADDRESSES (one per host)
#   netns_exec HOST COMMAND...         runs COMMAND in host HOST's namespace
#   netns_down                         deletes the namespaces and the bridge

NETNS_PREFIX="tns$$"
NETNS_BRIDGE="tbr$$"
NETNS_HOSTS=0
NETNS_ADDRESSES=()

netns_check() {
  if [ "$(id -u)" -ne 0 ]; then echo "needs root to create network namespaces (ip netns, tc)"; return 1; fi
  if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then echo "needs iproute2 (ip, tc)"; return 1; fi
  local probe="tnsprobe$$"
  if ! ip netns add "$probe" 2>/dev/null; then echo "ip netns add failed: network namespaces are not available here"; return 1; fi
  ip netns del "$probe"
}

netns_up() {
  local hosts=$1 rate=${2:-none} mtu=${3:-1500} net=$(( $$ % 200 + 20 ))
  NETNS_HOSTS=$hosts
  NETNS_ADDRESSES=()
  ip link add "$NETNS_BRIDGE" type bridge
  ip link set "$NETNS_BRIDGE" up
  local h ns port
  for ((h = 0; h < hosts; h++)); do
    ns="$NETNS_PREFIX-$h" port="${NETNS_PREFIX}b$h"
    ip netns add "$ns"
    ip link add "${NETNS_PREFIX}v$h" mtu "$mtu" type veth peer name "$port" mtu "$mtu"
    ip link set "${NETNS_PREFIX}v$h" netns "$ns"
    ip -n "$ns" link set "${NETNS_PREFIX}v$h" name eth0
    ip link set "$port" master "$NETNS_BRIDGE" up
    ip -n "$ns" addr add "10.78.$net.$((h + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    if [ "$rate" != none ]; then
      ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 256kb latency 100ms
      tc qdisc add dev "$port" root tbf rate "$rate" burst 256kb latency 100ms
    fi
    NETNS_ADDRESSES+=("10.78.$net.$((h + 1))")
  done
}

netns_exec() {
  local host=$1
  shift
  ip netns exec "$NETNS_PREFIX-$host" "$@"
}

netns_down() {
  local h
  for ((h = 0; h < NETNS_HOSTS; h++)); do ip netns del "$NETNS_PREFIX-$h" 2>/dev/null || true; done
  ip link del "$NETNS_BRIDGE" 2>/dev/null || true
}
