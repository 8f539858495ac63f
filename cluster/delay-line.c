// A delay line for emulated hosts (cluster/netns.sh), netem's fixed delay and rate for kernels without
// netem: the switch namespace routes every packet between hosts into the TUN device this program
// owns, and each comes back out of it DELAY after it went in; the kernel then routes it on to its
// host. One way, so a round trip between two hosts gains 2 x DELAY.
//
// Given a RATE (bits a second), the line is also the hosts' links: a packet leaves its sender's link
// once that link has sent what was before it, at RATE, then travels DELAY, and reaches its receiver
// once the receiver's link has carried it, at RATE (the bits stream in: a packet takes the later of
// its arrival and the receiver's link's last packet plus its own time). Hosts are told apart by the
// last byte of their IPv4 address. This is what tc tbf alone cannot do with latency: between two
// steps of an all-reduce its bucket refills during the wait, and the next step's 256 KB go at once.
// Packets of at most 256 bytes (ACKs) pass the queues, as a host's fair queueing interleaves them.
//
// Offloads are on (IFF_VNET_HDR, TUNSETOFFLOAD): the kernel hands over whole TCP segments of up to
// 64 KB with a virtio-net header and takes them back as they were, so at 1 Gbit/s a host's traffic is
// a few thousand packets a second, not the ~80,000 of 1500-byte frames. A packet that finds the line
// full (QUEUE packets) is dropped, as netem's limit does.
//
//   delay-line DEVICE MICROSECONDS [BITS_PER_SECOND|0 [QUEUE]]
//                                    runs until killed; prints "ready" once DEVICE exists
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

enum { slotBytes = 65536 + 64, vnetBytes = sizeof(struct virtio_net_hdr), smallBytes = 256 };

struct slot {
    long long due;        // ns, CLOCK_MONOTONIC
    unsigned long order;  // arrival order: equal due times leave in it
    ssize_t bytes;
    unsigned char data[slotBytes];
};

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long long parse(const char *text, long long low, long long high, const char *what) {
    char *end;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno || *end || value < low || value > high) {
        fprintf(stderr, "delay-line: %s must be a whole number in %lld...%lld, got '%s'\n", what, low, high, text);
        exit(2);
    }
    return value;
}

// the slots waiting, as a binary min-heap of indices by (due, order)
static struct slot *slots;
static long *heap, waiting;

static int earlier(long a, long b) {
    return slots[a].due < slots[b].due || (slots[a].due == slots[b].due && slots[a].order < slots[b].order);
}

static void push(long s) {
    long i = waiting++;
    heap[i] = s;
    while (i > 0 && earlier(heap[i], heap[(i - 1) / 2])) {
        long parent = (i - 1) / 2, t = heap[i];
        heap[i] = heap[parent];
        heap[parent] = t;
        i = parent;
    }
}

static long pop(void) {
    long top = heap[0], i = 0;
    heap[0] = heap[--waiting];
    for (;;) {
        long l = 2 * i + 1, r = l + 1, m = i;
        if (l < waiting && earlier(heap[l], heap[m])) m = l;
        if (r < waiting && earlier(heap[r], heap[m])) m = r;
        if (m == i) break;
        long t = heap[i];
        heap[i] = heap[m];
        heap[m] = t;
        i = m;
    }
    return top;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: delay-line DEVICE MICROSECONDS [BITS_PER_SECOND|0 [QUEUE]]\n");
        return 2;
    }
    long long delay = parse(argv[2], 0, 10000000, "MICROSECONDS") * 1000LL;
    long long rate = argc >= 4 ? parse(argv[3], 0, 1000000000000LL, "BITS_PER_SECOND") : 0;
    long queue = argc == 5 ? (long)parse(argv[4], 1, 65536, "QUEUE") : 1024;
    if (strlen(argv[1]) >= IFNAMSIZ) {
        fprintf(stderr, "delay-line: device name '%s' is longer than %d\n", argv[1], IFNAMSIZ - 1);
        return 2;
    }
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        perror("delay-line: /dev/net/tun");
        return 1;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR;
    strcpy(ifr.ifr_name, argv[1]);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) < 0) {
        perror("delay-line: TUNSETIFF/TUNSETOFFLOAD");
        return 1;
    }
    prctl(PR_SET_TIMERSLACK, 1UL);  // wake at the due time, not up to 50 us after
    // touched only as far as packets fill them: ACKs use one page of their slot
    slots = calloc((size_t)queue, sizeof *slots);
    heap = calloc((size_t)queue, sizeof *heap);
    long *free_slots = calloc((size_t)queue, sizeof *free_slots), free_count = queue;
    static unsigned char discard[slotBytes];
    if (!slots || !heap || !free_slots) {
        fprintf(stderr, "delay-line: cannot allocate %ld slots\n", queue);
        return 1;
    }
    for (long i = 0; i < queue; i++) free_slots[i] = queue - 1 - i;
    // when each host's link is next free to send (egress) and to receive (ingress), ns
    static long long egress[256], ingress[256];
    printf("ready\n");
    fflush(stdout);
    unsigned long arrivals = 0, dropped = 0;
    for (;;) {
        long long now = now_ns();
        while (waiting > 0 && slots[heap[0]].due <= now) {
            long s = pop();
            // a packet the kernel refuses (its host's link is down) is lost, as on a wire
            (void)!write(fd, slots[s].data, (size_t)slots[s].bytes);
            free_slots[free_count++] = s;
        }
        struct timespec wait, *timeout = NULL;
        if (waiting > 0) {
            long long left = slots[heap[0]].due - now_ns();
            if (left < 0) left = 0;
            wait.tv_sec = left / 1000000000LL;
            wait.tv_nsec = left % 1000000000LL;
            timeout = &wait;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (ppoll(&p, 1, timeout, NULL) < 0 && errno != EINTR) {
            perror("delay-line: ppoll");
            return 1;
        }
        if (!(p.revents & POLLIN)) continue;
        long long arrived = now_ns();
        for (;;) {
            long s = free_count > 0 ? free_slots[free_count - 1] : -1;
            ssize_t n = read(fd, s >= 0 ? slots[s].data : discard, slotBytes);
            if (n <= 0) break;
            if (s < 0) {
                if (++dropped % 1000 == 1) fprintf(stderr, "delay-line: queue of %ld full, %lu dropped\n", queue, dropped);
                continue;
            }
            free_count -= 1;
            struct slot *packet = &slots[s];
            packet->bytes = n;
            packet->order = arrivals++;
            packet->due = arrived + delay;
            const unsigned char *ip = packet->data + vnetBytes;
            if (rate > 0 && n >= (ssize_t)vnetBytes + 20 && (ip[0] >> 4) == 4) {
                // the bytes on the wire: each segment of a TCP segmentation offload carries the headers
                const struct virtio_net_hdr *h = (const void *)packet->data;
                long long bytes = n - (long long)vnetBytes;
                if (h->gso_type != VIRTIO_NET_HDR_GSO_NONE && h->gso_size > 0 && h->hdr_len < bytes) {
                    long long segments = (bytes - h->hdr_len + h->gso_size - 1) / h->gso_size;
                    bytes += (segments - 1) * h->hdr_len;
                }
                long long wire = bytes * 8 * 1000000000LL / rate;
                unsigned char from = ip[15], to = ip[19];
                if (bytes <= smallBytes) {
                    // an ACK: a host's queue interleaves it with its segments of 1500 bytes, not after
                    // its 64 KB ones (which would hold every ACK a sender waits for for milliseconds)
                    packet->due = arrived + wire + delay;
                } else {
                    long long sent = (egress[from] > arrived ? egress[from] : arrived) + wire;
                    egress[from] = sent;
                    long long landed = sent + delay, received = ingress[to] + wire > landed ? ingress[to] + wire : landed;
                    ingress[to] = received;
                    packet->due = received;
                }
            }
            push(s);
        }
    }
}
