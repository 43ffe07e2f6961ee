// A UDP flooder for bench/ebpf.sh: 1200-byte datagrams to ADDR:7946 for SECONDS, 64 a call with
// sendmmsg, from a non-blocking socket; prints how many it sent. Built by the bench with clang.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: flood ADDR SECONDS\n");
        return 2;
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(7946)};
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
        fprintf(stderr, "flood: %s is not an IPv4 address\n", argv[1]);
        return 2;
    }
    double secs = atof(argv[2]);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    static char payload[1200];
    memset(payload, 0x42, sizeof payload);
    struct mmsghdr msgs[64];
    struct iovec iov = {payload, sizeof payload};
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < 64; i++) {
        msgs[i].msg_hdr.msg_name = &to;
        msgs[i].msg_hdr.msg_namelen = sizeof to;
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long long sent = 0;
    for (;;) {
        int n = sendmmsg(s, msgs, 64, 0);
        if (n > 0)
            sent += n;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 >= secs)
            break;
    }
    printf("%lld\n", sent);
    return 0;
}
