# shellcheck shell=bash
# Emulated hosts on one Linux machine, sourced by cluster/netns-cluster and bench/netns-allreduce:
# one network namespace per host, each with an interface named eth0 at 10.78.<net>.<host + 1>/24, all on
# one bridge; links optionally shaped with tc tbf in both directions (the host's egress inside its
# namespace, its ingress on the bridge port). Needs root. Call netns_down on every exit (trap).
#
# The bridge lives in a namespace of its own (the "switch"), not in the host's: nothing of the host's
# firewall applies to it. With Docker installed the host's FORWARD policy is DROP and bridged frames go
# through iptables (bridge-nf-call-iptables), which silently dropped all traffic between the hosts.
#
#   netns_up HOSTS [RATE|none] [MTU]   sets NETNS_PREFIX, NETNS_SWITCH, NETNS_ADDRESSES (one per host);
#                                      NETNS_TCP_TIMESTAMPS=0 turns TCP timestamps off in the hosts
#                                      (12 more payload bytes a segment; Linux's default is on);
#                                      NETNS_TCP_CONGESTION=cubic|bbr|reno sets the hosts' congestion
#                                      control (a new namespace takes the machine's; a cloud image may
#                                      default to bbr where Debian's is cubic). A namespace may only
#                                      choose one the machine allows, so the machine's allowed list is
#                                      widened for the run and put back by netns_down
#   netns_exec HOST COMMAND...         runs COMMAND in host HOST's namespace
#   netns_link HOST up|down            cuts or restores host HOST's link (its bridge port)
#   netns_shape HOST RATE              changes host HOST's link rate (both directions)
#   netns_down                         deletes the namespaces (the bridge with its switch)

NETNS_PREFIX="tns$$"
NETNS_SWITCH="$NETNS_PREFIX-switch"
NETNS_HOSTS=0
NETNS_ADDRESSES=()
NETNS_ALLOWED_CONGESTION=""

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
  if [ -n "${NETNS_TCP_CONGESTION:-}" ]; then
    local allowed
    allowed=$(sysctl -n net.ipv4.tcp_allowed_congestion_control)
    if [[ " $allowed " != *" $NETNS_TCP_CONGESTION "* ]]; then
      NETNS_ALLOWED_CONGESTION=$allowed
      sysctl -qw net.ipv4.tcp_allowed_congestion_control="$allowed $NETNS_TCP_CONGESTION"
    fi
  fi
  ip netns add "$NETNS_SWITCH"
  ip -n "$NETNS_SWITCH" link add br0 type bridge
  ip -n "$NETNS_SWITCH" link set br0 up
  local h ns
  for ((h = 0; h < hosts; h++)); do
    ns="$NETNS_PREFIX-$h"
    ip netns add "$ns"
    # the pair is made in the switch; one end moves to the host's namespace and becomes its eth0
    ip -n "$NETNS_SWITCH" link add "port$h" mtu "$mtu" type veth peer name "host$h" mtu "$mtu"
    ip -n "$NETNS_SWITCH" link set "host$h" netns "$ns"
    ip -n "$ns" link set "host$h" name eth0
    ip -n "$NETNS_SWITCH" link set "port$h" master br0 up
    ip -n "$ns" addr add "10.78.$net.$((h + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    if [ -n "${NETNS_TCP_TIMESTAMPS:-}" ]; then ip netns exec "$ns" sysctl -qw net.ipv4.tcp_timestamps="$NETNS_TCP_TIMESTAMPS"; fi
    if [ -n "${NETNS_TCP_CONGESTION:-}" ]; then ip netns exec "$ns" sysctl -qw net.ipv4.tcp_congestion_control="$NETNS_TCP_CONGESTION"; fi
    if [ "$rate" != none ]; then netns_shape "$h" "$rate"; fi
    NETNS_ADDRESSES+=("10.78.$net.$((h + 1))")
  done
}

netns_shape() {
  local host=$1 rate=$2
  ip netns exec "$NETNS_PREFIX-$host" tc qdisc replace dev eth0 root tbf rate "$rate" burst 256kb latency 100ms
  ip netns exec "$NETNS_SWITCH" tc qdisc replace dev "port$host" root tbf rate "$rate" burst 256kb latency 100ms
}

netns_link() {
  ip -n "$NETNS_SWITCH" link set "port$1" "$2"
}

netns_exec() {
  local host=$1
  shift
  ip netns exec "$NETNS_PREFIX-$host" "$@"
}

netns_down() {
  local h pid
  for ((h = 0; h < NETNS_HOSTS; h++)); do
    # nothing of a host outlives it (a process stopped by a drill would take no signal but this)
    for pid in $(ip netns pids "$NETNS_PREFIX-$h" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$NETNS_PREFIX-$h" 2>/dev/null || true
  done
  ip netns del "$NETNS_SWITCH" 2>/dev/null || true
  if [ -n "$NETNS_ALLOWED_CONGESTION" ]; then
    sysctl -qw net.ipv4.tcp_allowed_congestion_control="$NETNS_ALLOWED_CONGESTION" || true
    NETNS_ALLOWED_CONGESTION=""
  fi
}
