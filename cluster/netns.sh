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
# With a DELAY the switch routes instead of bridging (this kernel has no netem to delay a bridge's
# frames): it answers every host's ARP for the others (proxy ARP), sends what comes in from a host
# into a TUN device whose delay line (cluster/delay-line.c, built here with the toolchain's clang)
# hands it back DELAY later, and routes it from there to its host. The hosts see one /24 either way.
# The line also paces each host's link at RATE, both ways: tbf stays (its counters are what the
# benches read) but with a delay its bucket refills while a step waits, and lets 256 KB through at once.
#
#   netns_up HOSTS [RATE|none] [MTU] [DELAY|none]
#                                      sets NETNS_PREFIX, NETNS_SWITCH, NETNS_ADDRESSES (one per host);
#                                      DELAY (500us, 2ms) holds every packet between two hosts that long
#                                      (cluster/delay-line.c, below);
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

# microseconds of a DELAY (250us, 2ms, 1s); fails on anything else
netns_microseconds() {
  case "$1" in
    *us) [[ ${1%us} =~ ^[0-9]+$ ]] && echo "${1%us}" ;;
    *ms) [[ ${1%ms} =~ ^[0-9]+$ ]] && echo "$(( ${1%ms} * 1000 ))" ;;
    *s) [[ ${1%s} =~ ^[0-9]+$ ]] && echo "$(( ${1%s} * 1000000 ))" ;;
    *) return 1 ;;
  esac
}

netns_up() {
  local hosts=$1 rate=${2:-none} mtu=${3:-1500} delay=${4:-none} net=$(( $$ % 200 + 20 )) micros=""
  if [ "$delay" != none ]; then
    micros=$(netns_microseconds "$delay") || { echo "netns: a delay is like 500us or 2ms, got '$delay'" >&2; return 2; }
    mkdir -p .build
    if [ ! -x .build/delay-line ] || [ cluster/delay-line.c -nt .build/delay-line ]; then
      clang -O2 -o .build/delay-line cluster/delay-line.c
    fi
  fi
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
  if [ -z "$micros" ]; then
    ip -n "$NETNS_SWITCH" link add br0 type bridge
    ip -n "$NETNS_SWITCH" link set br0 up
  else
    local sysctl=(ip netns exec "$NETNS_SWITCH" sysctl -qw)
    "${sysctl[@]}" net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    # the line paces each host's link at the rate too: tbf's bucket would refill while a step waits
    local bits=0
    case "$rate" in
      *gbit) bits=$(( ${rate%gbit} * 1000000000 )) ;;
      *mbit) bits=$(( ${rate%mbit} * 1000000 )) ;;
      none) ;;
      *) echo "netns: with a delay the rate is like 1gbit or 100mbit, got '$rate'" >&2; return 2 ;;
    esac
    # started from a subshell: not one of the caller's jobs, which a bare `wait` would wait for
    (ip netns exec "$NETNS_SWITCH" .build/delay-line delay0 "$micros" "$bits" >"/tmp/$NETNS_PREFIX-delay.out" 2>&1 &)
    local waited
    for ((waited = 0; waited < 50; waited++)); do
      grep -q ready "/tmp/$NETNS_PREFIX-delay.out" 2>/dev/null && break
      sleep 0.1
    done
    if ! grep -q ready "/tmp/$NETNS_PREFIX-delay.out" 2>/dev/null; then
      echo "netns: the delay line did not start: $(cat "/tmp/$NETNS_PREFIX-delay.out" 2>/dev/null)" >&2
      rm -f "/tmp/$NETNS_PREFIX-delay.out"
      return 1
    fi
    rm -f "/tmp/$NETNS_PREFIX-delay.out"
    ip -n "$NETNS_SWITCH" link set delay0 mtu "$mtu" up
    ip -n "$NETNS_SWITCH" route add default dev delay0 table 100
    ip -n "$NETNS_SWITCH" link set lo up
  fi
  local h ns
  for ((h = 0; h < hosts; h++)); do
    ns="$NETNS_PREFIX-$h"
    ip netns add "$ns"
    # the pair is made in the switch; one end moves to the host's namespace and becomes its eth0
    ip -n "$NETNS_SWITCH" link add "port$h" mtu "$mtu" type veth peer name "host$h" mtu "$mtu"
    ip -n "$NETNS_SWITCH" link set "host$h" netns "$ns"
    ip -n "$ns" link set "host$h" name eth0
    if [ -z "$micros" ]; then
      ip -n "$NETNS_SWITCH" link set "port$h" master br0 up
    else
      # what host h sends goes into the delay line; what leaves the line goes to the host it names
      ip -n "$NETNS_SWITCH" link set "port$h" up
      ip netns exec "$NETNS_SWITCH" sysctl -qw "net.ipv4.conf.port$h.proxy_arp=1"
      ip -n "$NETNS_SWITCH" route add "10.78.$net.$((h + 1))/32" dev "port$h"
      ip -n "$NETNS_SWITCH" rule add iif "port$h" lookup 100
    fi
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
  ip netns exec "$NETNS_PREFIX-$host" tc qdisc replace dev eth0 root tbf rate "$rate" burst "${NETNS_BURST:-256kb}" latency 100ms
  ip netns exec "$NETNS_SWITCH" tc qdisc replace dev "port$host" root tbf rate "$rate" burst "${NETNS_BURST:-256kb}" latency 100ms
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
  for pid in $(ip netns pids "$NETNS_SWITCH" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  ip netns del "$NETNS_SWITCH" 2>/dev/null || true
  if [ -n "$NETNS_ALLOWED_CONGESTION" ]; then
    sysctl -qw net.ipv4.tcp_allowed_congestion_control="$NETNS_ALLOWED_CONGESTION" || true
    NETNS_ALLOWED_CONGESTION=""
  fi
}
